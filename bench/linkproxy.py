"""A loopback reverse proxy that plays a slow link: every blob body shares one token bucket.

    client --HTTP--> LinkProxy(127.0.0.1:P) --HTTP--> docker-registry(127.0.0.1:R)

Clients are pointed at the proxy's address as if it were the registry (a reverse proxy, not
HTTP_PROXY: Go programs such as skopeo never use a proxy for loopback addresses).  The bodies of
``GET .../blobs/...`` responses go out in 64 KiB pieces, each waiting for its slot on one shared
timeline of ``rate`` bytes per second, so concurrent downloads split the link between them the
way they would over a real one; manifests, configs' headers and everything else pass unthrottled.

A sender up to ``burst`` seconds late (default 0.1 s: 4 MB at 40 MB/s, about a socket's send
buffer) catches up; the link never starts early.  Over a real link the sender's socket buffer
keeps the wire busy while the sending process is not scheduled; here the sender is a Python
thread on the same small machine as the client, and without this every late wake-up of it
(measured: 0.4 to 1.2 s in all during one pull on a loaded 2-core machine) is link time lost
and billed to the client.
"""
from __future__ import annotations

import http.client
import http.server
import socketserver
import threading
import time

PIECE = 64 << 10
BURST = 0.1   # seconds a sender may be late without losing link time (see above)


class TokenBucket:
    """One link: bytes are sent in reserved slots on a shared timeline.

    A sender up to ``burst`` seconds late catches up (its slots continue where the link was:
    what a send buffer absorbs); a longer pause is link time lost, counted in ``idle``."""

    def __init__(self, rate, burst=BURST):
        self.rate = float(rate)
        self.burst = max(burst, PIECE / self.rate)
        self._free_at = 0.0
        self._lock = threading.Lock()
        self.idle = 0.0     # seconds of the pauses longer than ``burst`` after the first byte

    def take(self, n):
        with self._lock:
            now = time.monotonic()
            gap = now - self._free_at
            if gap <= self.burst:
                start = self._free_at
            else:
                start = now
                if self._free_at:
                    self.idle += gap
            self._free_at = start + n / self.rate
            due = self._free_at
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request, client_address):
        pass   # a client that hung up mid-body is not news


class LinkProxy:
    def __init__(self, upstream, rate=None, burst=BURST):
        """``upstream`` host:port; ``rate`` bytes per second for blob bodies (None: unlimited);
        ``burst``: seconds a sender may be late without losing link time (0: one 64 KiB piece)."""
        self.upstream = upstream
        self.bucket = TokenBucket(rate, burst) if rate else None
        self.blob_bytes = 0
        self._count_lock = threading.Lock()
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in separate writes: with Nagle, every small response
            # (manifest, config, token) would wait ~40 ms for the client's delayed ACK.
            disable_nagle_algorithm = True

            def log_message(self, *a):
                pass

            def _go(self):
                owner._handle(self)

            do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _go

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.host = f"127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()
        self._local = threading.local()

    def _upstream(self):
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = http.client.HTTPConnection(self.upstream, timeout=60)
        return conn

    def _handle(self, h):
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else None
        # A list, not a dict: clients repeat Accept.  Host stays the proxy's address (the registry
        # builds absolute Location headers from it).
        headers = [(k, v) for k, v in h.headers.items() if k.lower() not in ("connection", "keep-alive")]
        for attempt in (0, 1):
            conn = self._upstream()
            try:
                conn.putrequest(h.command, h.path, skip_host=True, skip_accept_encoding=True)
                for k, v in headers:
                    conn.putheader(k, v)
                conn.endheaders(body)
                resp = conn.getresponse()
                break
            except (http.client.HTTPException, OSError):
                conn.close()
                self._local.conn = None
                if attempt:
                    raise
        h.send_response(resp.status, resp.reason)
        for k, v in resp.getheaders():
            if k.lower() not in ("transfer-encoding", "connection", "keep-alive", "date", "server",
                                 "content-length"):
                h.send_header(k, v)
        if h.command == "HEAD":
            h.send_header("Content-Length", resp.getheader("Content-Length") or "0")
            h.end_headers()
            resp.read()
            return
        data_len = resp.getheader("Content-Length")
        throttled = self.bucket is not None and h.command == "GET" and "/blobs/" in h.path and resp.status in (200, 206)
        if data_len is None:   # chunked upstream: read it all (small error bodies)
            data = resp.read()
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            h.wfile.write(data)
            return
        h.send_header("Content-Length", data_len)
        h.end_headers()
        buf = bytearray(PIECE)
        view = memoryview(buf)
        try:
            while True:
                n = resp.readinto(buf)
                if not n:
                    break
                if throttled:
                    self.bucket.take(n)
                h.wfile.write(view[:n])
                if "/blobs/" in h.path:
                    with self._count_lock:
                        self.blob_bytes += n
        except OSError:
            h.close_connection = True
            conn.close()
            self._local.conn = None

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
