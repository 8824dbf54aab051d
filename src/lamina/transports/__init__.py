"""Moving images between skopeo-style transports and the store.

    copy("oci:/src:latest", "nginx:1")                  # into the store (verified, extracted, named)
    copy("nginx:1", "docker-archive:/tmp/n.tar")        # out of it
    load("/tmp/n.tar", store=store)                     # lamina load -i
    save(["nginx:1"], "/tmp/n.tar", store=store)        # lamina save -o

Sources are read with the oci/ readers (every blob verified); destinations
only ever show complete output (archives are renamed into place, layout
index.json replaced atomically, store images named last).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..apiargs import a_name, a_path, a_store, one_or_many
from ..errors import ImageNotFoundError, InvalidReferenceError, StoreError
from ..reference import Reference
from .spec import STORE, ImageSpec, parse
from .output import is_stdout
from .sources import ImageData, archive_images, from_store, open_image

ARCHIVE_FORMATS = ("docker-archive", "oci-archive")


@dataclass
class CopyResult:
    source: str
    destination: str
    manifest_digest: str
    config_digest: str
    names: list = field(default_factory=list)   # names given in the store (str)


_IMAGE_NAME = "an image name (oci:PATH[:REF], docker-archive:PATH, oci-archive:PATH or a reference)"


def _store_for(store, *specs):
    if store is None and any(s.transport == STORE for s in specs):
        from ..store import Store
        store = Store()
    return store


def _store_name(spec):
    try:
        ref = Reference.parse(spec.ref)
    except InvalidReferenceError as e:
        raise InvalidReferenceError(f"{spec.ref!r} is not a valid name for an image in the store: {e}") from None
    if ref.digest:
        raise InvalidReferenceError(f"{spec.ref!r}: name a copied image by tag, not by digest")
    return ref


def copy(source, destination, *, store=None, platform=None, report=None):
    """Copy one image; ``platform`` picks from a multi-platform source. Returns CopyResult."""
    for value, arg in ((source, "source"), (destination, "destination")):
        if not isinstance(value, ImageSpec):
            a_name(value, arg, _IMAGE_NAME)
    a_store(store, optional=True)
    src, dst = parse(source), parse(destination)
    if dst.transport == STORE:
        _store_name(dst)  # checked before any work is done
    own = _store_for(store, src, dst) if store is None else None
    try:
        return _copy(src, dst, destination, store if own is None else own, platform, report)
    finally:
        if own is not None:
            own.close()  # a writer's close takes back what an import refused beside it left


def _copy(src, dst, destination, store, platform, report):
    if dst.transport == STORE:
        name = _store_name(dst)
    if dst.transport == "oci" and store is not None and os.path.abspath(dst.path) == str(store.root):
        raise InvalidReferenceError(f"{destination}: that is the store itself; copy to a store reference instead")
    # a zstd, xz or bzip2 archive is inflated where the store ingests, or beside the output
    # (not in a tmpfs /tmp it could fill)
    if dst.transport == STORE:
        store.lease()   # the store is made, and its ingest dir, before the write that would make them
        scratch = store.paths.ingest
    else:
        scratch = dst.path
    data = open_image(src, platform, store, scratch)
    result = CopyResult(str(src), str(dst), data.manifest_digest, data.config_digest)
    if dst.transport == STORE:
        from ..store.imports import import_image
        import_image(store, data, [name], report)
        result.names = [str(name)]
    elif dst.transport == "oci":
        from .oci_write import write_layout
        write_layout(data, dst.path, dst.ref)
    elif dst.transport == "oci-archive":
        from .oci_write import write_archive_file
        write_archive_file([(data, dst.ref)], dst.path)
    else:
        from .docker_write import write_archive_file
        refs = [_store_name(ImageSpec(STORE, None, dst.ref))] if dst.ref else data.names
        write_archive_file([(data, refs)], dst.path)
    return result


@dataclass
class LoadedImage:
    image: object                                 # store.Image
    names: list                                   # Reference, as loaded


def load(path, *, store, platform=None, report=None):
    """Every image of a docker-archive or oci-archive file into the store (``lamina load``)."""
    from ..store.imports import import_images
    a_store(store)
    path = os.fspath(a_path(path, "path", "an archive's path or an OCI layout directory"))
    if not os.path.exists(path):
        raise ImageNotFoundError(f"{path}: no such file")
    spec = ImageSpec("oci" if os.path.isdir(path) else "docker-archive", path, None)
    store.lease()   # the store is made, and its ingest dir, before the write that would make them
    images = archive_images(spec, platform, store.paths.ingest)
    stored = import_images(store, [(data, data.names) for data in images], report)
    return [LoadedImage(image, list(data.names)) for image, data in zip(stored, images)]


def load_stream(stream, *, store, platform=None, report=None):
    """``lamina load`` from a pipe: an archive on a binary stream (read to its end).

    Archives need random access, so the stream is spooled next to the store (same
    filesystem, removed after), under the gc lease so that fsck --repair does not take
    the spool file for debris.  Errors speak of "the archive on stdin", not the spool."""
    import tempfile
    from ..errors import LaminaError
    from .output import FULL_WRITE_ERRNOS
    store.lease()
    from ..store.paths import LOAD_SPOOL
    fd, spooled = tempfile.mkstemp(prefix=LOAD_SPOOL[0], suffix=LOAD_SPOOL[1], dir=store.paths.ingest)
    try:
        size = 0
        with os.fdopen(fd, "wb", buffering=0) as f:   # unbuffered: no write left for close() to fail
            while True:
                try:
                    chunk = stream.read(1 << 20)
                except OSError as e:
                    raise StoreError(f"cannot read the archive on stdin: {e.strerror or e}") from None
                if not chunk:
                    break
                view = memoryview(chunk)
                while view:
                    try:
                        view = view[f.write(view):]
                    except OSError as e:
                        # "No space left on device" or "Input/output error" alone: the spool file is ours
                        why = "no room to spool it" if e.errno in FULL_WRITE_ERRNOS else "cannot spool it"
                        raise StoreError(f"the archive on stdin: {why} in the store {store.paths.root}: "
                                         f"{e.strerror}") from None
                size += len(chunk)
        empty = size == 0
        if empty:
            raise InvalidReferenceError("nothing to load: stdin was empty (give the archive with -i FILE "
                                        "or lamina load < FILE)")
        try:
            return load(spooled, store=store, platform=platform, report=report)
        except LaminaError as e:
            e.args = (str(e).replace(spooled, "the archive on stdin"),)
            raise
    finally:
        os.unlink(spooled)


def _save_set(store, refs):
    """[(ImageData, [Reference])] for ``save``: a name without a tag means every tag of that repository."""
    chosen = {}
    for r in refs:
        picked = []
        try:
            bare = Reference.parse(r, default_tag=False)
        except InvalidReferenceError:
            bare = None
        if bare is not None and bare.tag is None and bare.digest is None:
            picked = [(image, [t for t in image.refs if t.name == bare.name])
                      for image in store.images() if any(t.name == bare.name for t in image.refs)]
        if not picked:
            image = store.resolve(r)
            tagged = [t for t in image.refs if bare is not None and bare.tag and t == Reference.parse(r)]
            picked = [(image, tagged)]
        for image, names in picked:
            entry = chosen.setdefault(image.manifest_digest, (image, []))
            entry[1].extend(n for n in names if n not in entry[1])
    return [(from_store(store, image.manifest_digest), names, image) for image, names in chosen.values()]


def save(refs, output=None, *, store, format="docker-archive"):
    """Write images from the store to an archive file (``output`` None: a binary stream argument
    ``stream=`` is not needed, stdout is used)."""
    if format not in ARCHIVE_FORMATS:
        raise InvalidReferenceError(f"unknown archive format {format!r}; use one of {', '.join(ARCHIVE_FORMATS)}")
    refs = one_or_many(refs, "refs", "an image reference")
    if not refs:
        raise InvalidReferenceError("nothing to save: name at least one image")
    picked = _save_set(store, refs)
    images = [(data, names) for data, names, _ in picked]
    if format == "docker-archive":
        # docker's archive format has one image per tag: a multi-arch image saves the tagged platform
        from .docker_write import write_archive, write_archive_file
        items = images
    else:
        # an oci-archive keeps a multi-arch image whole: its index under the tag, every platform in it
        from .oci_write import write_archive, write_archive_file
        from .sources import multi_arch_from_store
        items = []
        for data, names, image in picked:
            data = multi_arch_from_store(store, image) or data
            items += [(data, str(n)) for n in names] or [(data, None)]
    if output is None:
        import sys
        write_archive(items, sys.stdout.buffer)
        sys.stdout.buffer.flush()
    else:
        write_archive_file(items, output)
    return images


__all__ = ["CopyResult", "ImageData", "ImageSpec", "LoadedImage", "copy", "is_stdout", "load", "load_stream", "parse",
           "save"]
