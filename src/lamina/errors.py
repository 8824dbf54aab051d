"""The one exception hierarchy of lamina.

Native code (lamina._extract) raises these same classes, so callers catch
``lamina.errors.LaminaError`` and never a bare OSError from deep inside.
Every message names the entry, layer or blob that was wrong.
"""
import contextlib
import contextvars


def layer_of(i, count):
    """How every message names the ``i``-th layer (from 0) of an image of ``count``:
    counted from 1, as docker and skopeo count them, and "of N" so it is never taken for an index."""
    return f"layer {i + 1} of {count}"


# Names an error lists as choices ("available: ..."): an image's index or archive decides how
# many, and 20,000 platforms or 100,000 names made one error line of megabytes.
MAX_LISTED = 20


def listing(names, limit=MAX_LISTED):
    """``names`` joined with ", ", the first ``limit`` of them and how many more; "none" if empty."""
    names = list(names)
    if not names:
        return "none"
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown} and {len(names) - limit} more"


def at_layer(e, i):
    """``e`` marked with the place (from 0) of the image's layer it is about, unless it has one:
    a snapshot's error names the layer by its blob digest alone, and a blob an image lists twice
    is two layers (name_the_layer reads the mark)."""
    if isinstance(e, LaminaError) and getattr(e, "layer_index", None) is None:
        e.layer_index = i
    return e


class LaminaError(Exception):
    """Base class of every error lamina raises on purpose."""


# --- archives and layers -------------------------------------------------

class InvalidArchiveError(LaminaError):
    """A layer's tar stream is malformed or truncated."""


class CompressionError(InvalidArchiveError):
    """The compressed stream is corrupt or not in the announced format."""


class UnsupportedEntryError(InvalidArchiveError):
    """A well-formed entry lamina refuses to apply (e.g. an unknown entry type)."""


class InvalidWhiteoutError(InvalidArchiveError):
    """A whiteout that names nothing inside its own directory."""


class UnsafeEntryError(InvalidArchiveError):
    """An entry that would replace the root or reach outside it."""


class LimitExceededError(InvalidArchiveError):
    """An archive exceeds a configured limit (entries, bytes, header, path, depth)."""


class ExtractError(LaminaError):
    """The filesystem refused an operation while applying an entry.

    ``errno`` is the system's error number when a system call said no (None otherwise), so a
    caller can tell a full disk (ENOSPC, EDQUOT) from what the layer asked for."""

    def __init__(self, *args, errno=None):
        super().__init__(*args)
        self.errno = errno


class MaterializeError(ExtractError):
    """The store's snapshots could not be materialized into the destination (flatten, bundle, mount)."""


# --- content and images ---------------------------------------------------

class InvalidDigestError(LaminaError, ValueError):
    """A digest string that is not ``sha256:`` + 64 lowercase hex."""


class DigestMismatchError(LaminaError):
    """Content does not hash to the digest it was announced with."""

    def __init__(self, what, expected, actual):
        self.what, self.expected, self.actual = what, expected, actual
        super().__init__(f"{what}: digest mismatch: expected {expected}, got {actual}")


class ImageError(LaminaError):
    """An image (layout, archive, manifest, config) is unusable."""


class UnsupportedMediaTypeError(ImageError):
    """A manifest, index, config or layer media type lamina does not handle."""


class ArtifactError(UnsupportedMediaTypeError):
    """A manifest whose config is not an image config (an artifact: SBOM, signature, chart)."""


class PlatformNotFoundError(ImageError):
    """No manifest in an index matches the requested platform."""

    def __init__(self, requested, available):
        self.requested, self.available = requested, list(available)
        super().__init__(f"no image for platform {requested}; available: {listing(self.available)}")


class LaminaWarning(UserWarning):
    """Something the user should know that did not stop the command: the CLI prints it as one
    ``lamina: warning:`` line on stderr; a caller of the API gets a Python warning."""


class PlatformMismatchWarning(LaminaWarning):
    """``--platform`` named a platform and the image, a single one (no index to choose from),
    says another in its config.  It is taken, as docker takes it (printing this warning),
    containerd and skopeo (saying nothing): there is no other image to choose.  The CLI
    prints it on stderr as docker words it; a caller of the API gets a Python warning."""

    def __init__(self, what, requested, actual):
        self.what, self.requested, self.actual = what, str(requested), str(actual)
        super().__init__(f"{what} was found but its platform ({self.actual}) does not match the specified "
                         f"platform ({self.requested})")


class CompactionDeferredWarning(LaminaWarning):
    """A compact store (``keep-blobs false``) could not compact an image it already held when it
    was next used, for want of space: the use went on, the image keeps its blobs, and its next
    use tries again."""

    def __init__(self, what, error):
        self.what, self.error = what, error
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        super().__init__(f"{what} stays uncompacted for now (keep-blobs false): {reason}; "
                         f"its blobs are kept and its next use compacts it")


def warn_if_other_platform(want, actual, what):
    """Warn (PlatformMismatchWarning) when a single image of platform ``actual`` was found where
    ``want`` was asked for (None: nothing asked, or the config says no platform)."""
    if want is not None and actual is not None and actual != want:
        import warnings
        warnings.warn(PlatformMismatchWarning(what, want, actual), stacklevel=3)


class BlobNotFoundError(ImageError):
    """A blob named by a manifest is missing."""


class ImageNotFoundError(ImageError):
    """No image with the given reference in the source."""


class NoSuchImageError(ImageNotFoundError):
    """A name or ID the store does not hold: every verb and the API say it in these words, with
    the name as docker normalizes it (``nginx`` is ``nginx:latest``, without ``docker.io/library/``)."""

    def __init__(self, name):
        self.name = name
        super().__init__(f"no such image: {name}")


class InvalidReferenceError(LaminaError, ValueError):
    """A malformed image reference or transport string."""


# --- registry client (issue 4, helper "registry") ---------------------------

class RegistryError(LaminaError):
    """A registry could not be reached, or answered with an error after retries."""

    def __init__(self, message, *, status=None, code=None):
        self.status, self.code = status, code
        super().__init__(message)


class AuthenticationError(RegistryError):
    """Credentials are missing, refused (401) or lack the permission asked (403)."""


# --- the image store (added by helper "store-core", issue 3) ------------------

class StoreError(LaminaError):
    """The image store is unusable, or an operation on it cannot proceed."""


class AmbiguousImageError(ImageError):
    """A short image ID that matches more than one image in the store."""


class Interrupted(LaminaError):
    """Work stopped because the user pressed Ctrl-C (raised in worker threads)."""


class Cancelled(LaminaError):
    """A worker stopped because another part of the same operation failed (a pull's other
    layer): that failure is the one reported.  Unlike Interrupted, what the worker leaves is
    removed before the operation returns, not by a detached process after it."""


class NeedsLowers(Exception):
    """An overlay-format layer, extracted before the layers below it were
    ready, met an entry that needs them.  Not an error: the caller extracts
    that layer again over its finished lowers."""


class ImpliedDirMoved(NeedsLowers):
    """A directory an overlay-format layer implied, made before the layers
    below it were known (``early_dirs``), is not a directory in them (a
    symlink there would have put the entries under it elsewhere).  The caller
    extracts that layer again, waiting for the layers below at that entry."""


def name_the_layer(e, digests, which):
    """An error of an image's layer that the store's snapshots, shared by every image, name by
    digest alone ("layer sha256:…: entry 'x': …", a full disk's "layer sha256:…: storing its
    snapshot failed"), or that a blob's download or ingest names by its digest alone ("blob
    sha256:…: cannot write it", "blob sha256:… not found in REPO", "GET blob sha256:… from
    REPO: 500"): say which layer of the image that is too, as unpack does ("layer 2 of 3
    (sha256:…): …", "layer 2 of 3: blob sha256:…").  ``digests``: the image's layer digests,
    bottom first; ``which(i)``: how the ``i``-th is named.  Rewrites ``e``'s message in place
    (keeping its class, errno and the rest); returns whether it did."""
    if len(e.args) != 1 or not isinstance(e.args[0], str):
        return False
    msg = e.args[0]
    # a blob an image lists twice is two layers: the place the error was marked with comes first
    # (snapshots.ensure_all, the pull's extraction), else the first layer of that digest
    at = getattr(e, "layer_index", None)
    first = [at] if isinstance(at, int) and 0 <= at < len(digests) else []
    for i in first + list(range(len(digests))):
        digest = digests[i]
        head = f"layer {digest}"
        if msg.startswith(head + ":") or msg.startswith(head + " ("):
            rest = msg[len(head):]
            # "layer sha256:… (diffID …): …" keeps its diffID in the one parenthesis
            e.args = (f"{which(i)} ({digest}{', ' + rest[2:] if rest.startswith(' (') else ')' + rest}",)
            if isinstance(getattr(e, "what", None), str) and e.what.startswith(head):
                e.what = e.args[0][:len(e.args[0]) - len(msg) + len(e.what)]
            return True
        if any(msg.startswith(f"{verb}blob {digest}") for verb in ("", "GET ", "HEAD ")):
            e.args = (f"{which(i)}: {msg}",)
            if isinstance(getattr(e, "what", None), str) and e.what.startswith("blob "):
                e.what = f"{which(i)}: {e.what}"
            return True
    return False


# set while a layers_named block runs: a Store API method's own naming leaves the layer to it
_naming_layers = contextvars.ContextVar("lamina_naming_layers", default=False)


@contextlib.contextmanager
def layers_named(digests, which, mismatch_comma=False, unless_named=False):
    """Within it, an error about one of an image's layers (``digests``, bottom first) that names
    the layer by digest alone names it by ``which(i)`` too (name_the_layer): what extracts an
    image's snapshots (unpack, mount, load, copy, pull) says which of its layers was refused.
    ``mismatch_comma``: a layer's diffID mismatch reads "WHICH, sha256:…: diffID …", as load
    and copy into a store have always said it, where the others say "WHICH (sha256:…): …".
    ``unless_named``: nothing, within a layers_named block of the caller (the Store API's methods
    name a layer by its place in the image, a load by its place in the archive too)."""
    if unless_named and _naming_layers.get():
        yield
        return
    token = _naming_layers.set(True)
    try:
        yield
    except DigestMismatchError as e:
        if not mismatch_comma:
            name_the_layer(e, digests, which)
            raise
        i = getattr(e, "layer_index", None)   # a blob listed twice is two layers: which one
        if i is None:
            i = next((k for k, digest in enumerate(digests) if e.what.startswith(f"layer {digest}")), None)
        if i is None:
            raise
        raise DigestMismatchError(f"{which(i)}, {e.what[len('layer '):]}", e.expected, e.actual) from None
    except LaminaError as e:
        name_the_layer(e, digests, which)
        raise
    finally:
        _naming_layers.reset(token)
