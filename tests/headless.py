"""Headless Chromium for the tests: open a page, collect what its console and log said, run a
script in it, take a full-page screenshot.

Chromium speaks the DevTools protocol over a pipe (``--remote-debugging-pipe``: commands in on
fd 3, replies and events out on fd 4, each JSON message ended by a NUL byte), so no port, no
websocket library and no network are involved.
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


def chromium_path():
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


class Browser:
    """One headless Chromium; ``open(url)`` gives a Page.  Use as a context manager."""

    def __init__(self, exe):
        self.profile = tempfile.mkdtemp(prefix="lamina-chromium-")
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()
        # The pipe fds must be 3 and 4 in the browser: bash moves them there before exec.
        argv = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--mute-audio",
                "--disable-extensions", "--disable-background-networking", f"--user-data-dir={self.profile}",
                "--remote-debugging-pipe", "about:blank"]
        self.proc = subprocess.Popen(
            ["bash", "-c", f'exec "$@" 3<&{to_child_r} 4>&{from_child_w}', "bash", *argv],
            pass_fds=(to_child_r, from_child_w), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        os.close(to_child_r)
        os.close(from_child_w)
        self._buf = b""
        self._next_id = 0
        self.events = []  # (sessionId, method, params) of every event seen

    def send(self, method, params=None, session=None, timeout=60):
        """Send a command, wait for its reply; its result, or RuntimeError with the error."""
        self._next_id += 1
        msg = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_child, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def wait_event(self, method, session, timeout=60):
        deadline = time.monotonic() + timeout
        while not any(s == session and m == method for s, m, _ in self.events):
            self._read(deadline)

    def _read(self, deadline):
        while b"\0" not in self._buf:
            if time.monotonic() > deadline:
                raise TimeoutError("chromium did not answer in time")
            chunk = os.read(self._from_child, 1 << 20)
            if not chunk:
                raise RuntimeError(f"chromium exited (status {self.proc.poll()})")
            self._buf += chunk
        raw, _, self._buf = self._buf.partition(b"\0")
        msg = json.loads(raw)
        if "method" in msg:
            self.events.append((msg.get("sessionId"), msg["method"], msg.get("params", {})))
        return msg

    def open(self, url, width=1200, height=900):
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable", session=session)
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, session=session)
        self.send("Page.navigate", {"url": url}, session=session)
        self.wait_event("Page.loadEventFired", session)
        return Page(self, session, width)

    def close(self):
        try:
            self.send("Browser.close", timeout=10)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_child)
        os.close(self._from_child)
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Page:
    def __init__(self, browser, session, width):
        self.browser, self.session, self.width = browser, session, width

    def problems(self):
        """Every console error or warning, uncaught exception and error log entry (failed loads
        included) the page produced: a page that renders cleanly has none."""
        out = []
        for session, method, p in self.browser.events:
            if session != self.session:
                continue
            if method == "Runtime.exceptionThrown":
                details = p["exceptionDetails"]
                out.append(f"{details.get('text')} {details.get('exception', {}).get('description', '')}")
            elif method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "warning", "assert"):
                out.append(f"console.{p['type']}: {[a.get('value') for a in p.get('args', [])]}")
            elif method == "Log.entryAdded" and p["entry"].get("level") in ("error", "warning"):
                out.append(f"log {p['entry'].get('source')}: {p['entry'].get('text')} {p['entry'].get('url', '')}")
        return out

    def evaluate(self, expression):
        """The JSON value of a script run in the page."""
        r = self.browser.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                  "awaitPromise": True}, session=self.session)
        if "exceptionDetails" in r:
            raise RuntimeError(f"script failed: {r['exceptionDetails']}")
        return r["result"].get("value")

    def screenshot(self):
        """PNG bytes of the whole page (not only the first screen)."""
        height = self.evaluate("document.documentElement.scrollHeight")
        self.browser.send("Emulation.setDeviceMetricsOverride",
                          {"width": self.width, "height": height, "deviceScaleFactor": 1, "mobile": False},
                          session=self.session)
        data = self.browser.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True},
                                 session=self.session)["data"]
        return base64.b64decode(data)
