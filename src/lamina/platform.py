"""Image platforms (os/architecture/variant) and how they match.

Normalization and matching follow containerd's ``platforms`` package, which
docker uses too: ``aarch64`` is ``arm64``, ``x86_64`` is ``amd64``, arm64
without a variant is arm64/v8, arm without a variant is arm/v7. One
difference: we spell the canonical arm64 variant ``v8`` (containerd drops it)
so printed platforms read like docker's ``linux/arm64/v8``.
"""
from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass

from .errors import InvalidReferenceError

_COMPONENT_RE = re.compile(r"[A-Za-z0-9_.-]+", re.ASCII)
# Longer than any os, architecture or variant there is (GOOS/GOARCH names are at most 11
# characters); a bound keeps a hostile index's platform out of every message whole.
MAX_COMPONENT = 64
# Values of GOOS; a lone "linux" in --platform means an OS, a lone "arm64" an architecture.
_KNOWN_OS = frozenset({
    "aix", "android", "darwin", "dragonfly", "freebsd", "illumos", "ios", "js",
    "linux", "netbsd", "openbsd", "plan9", "solaris", "wasip1", "windows",
})
# Values of GOARCH (after normalization: aarch64, x86_64, armhf... are spellings of these).
_KNOWN_ARCH = frozenset({
    "386", "amd64", "amd64p32", "arm", "armbe", "arm64", "arm64be", "loong64", "mips", "mipsle", "mips64",
    "mips64le", "mips64p32", "mips64p32le", "ppc", "ppc64", "ppc64le", "riscv", "riscv64", "s390", "s390x",
    "sparc", "sparc64", "wasm",
})


def _component_error(value, what):
    """Why ``value`` is no os, architecture or variant (``what``), or None.  containerd's
    specifier syntax (letters, digits, ``_ . -``), but not a part of dots alone (``..`` reads
    as a path) and at most MAX_COMPONENT characters."""
    if len(value) > MAX_COMPONENT:
        return f"{what} of {len(value)} characters (at most {MAX_COMPONENT})"
    if not _COMPONENT_RE.fullmatch(value):
        return (f"{what} {value!r} has characters other than letters, digits, '_', '.' and '-'" if value
                else f"empty {what}")
    if not value.strip("."):
        return f"{what} {value!r} is dots alone"
    return None


def _shown(spec, limit=80):
    """``spec`` quoted for a message, cut to ``limit`` characters."""
    return repr(spec) if len(spec) <= limit else repr(spec[:limit]) + f"... ({len(spec)} characters)"


def _normalize_os(os_name):
    os_name = os_name.lower()
    return "darwin" if os_name == "macos" else os_name


def _normalize_arch(arch, variant):
    arch, variant = arch.lower(), variant.lower()
    if arch == "i386":
        return "386", ""
    if arch in ("x86_64", "x86-64", "amd64"):
        return "amd64", "" if variant == "v1" else variant
    if arch in ("aarch64", "arm64"):
        if variant in ("", "8", "v8", "v8.0"):
            return "arm64", "v8"
        if variant in ("9", "9.0", "v9.0"):
            return "arm64", "v9"
        return "arm64", variant
    if arch == "armhf":
        return "arm", "v7"
    if arch == "armel":
        return "arm", "v6"
    if arch == "arm":
        if variant in ("", "7"):
            return "arm", "v7"
        if variant in ("5", "6", "8"):
            return "arm", "v" + variant
        return "arm", variant
    return arch, variant


# uname -m spellings that are not GOARCH names.
_UNAME_ARCH = {
    "x86_64": ("amd64", ""), "amd64": ("amd64", ""),
    "i386": ("386", ""), "i486": ("386", ""), "i586": ("386", ""), "i686": ("386", ""),
    "aarch64": ("arm64", "v8"), "arm64": ("arm64", "v8"), "aarch64_be": ("arm64be", ""),
    "armv5l": ("arm", "v5"), "armv5tel": ("arm", "v5"), "armv5tejl": ("arm", "v5"),
    "armv6l": ("arm", "v6"), "armv7l": ("arm", "v7"), "armv8l": ("arm", "v8"),
    "ppc64le": ("ppc64le", ""), "ppc64": ("ppc64", ""), "s390x": ("s390x", ""),
    "riscv64": ("riscv64", ""), "mips64": ("mips64", ""), "loongarch64": ("loong64", ""),
}


def machine_to_arch(machine):
    """(architecture, variant) for a ``uname -m`` value."""
    return _UNAME_ARCH.get(machine, (machine, ""))


CPUINFO = "/proc/cpuinfo"
# The x86-64 micro-architecture levels (System V psABI) as /proc/cpuinfo names their features
# ("pni" is SSE3, "abm" LZCNT); each level needs the ones below.  The kernel lists AVX and
# AVX-512 only when it saves their registers, which is what go-archvariant asks XGETBV.
_AMD64_LEVELS = (
    ("v2", frozenset({"cx16", "lahf_lm", "pni", "popcnt", "sse4_1", "sse4_2", "ssse3"})),
    ("v3", frozenset({"abm", "avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "movbe", "xsave"})),
    ("v4", frozenset({"avx512bw", "avx512cd", "avx512dq", "avx512f", "avx512vl"})),
)


@functools.lru_cache(maxsize=None)
def amd64_level():
    """This x86-64 CPU's level as a variant ("v2" ... "v4"), "" for the baseline (v1) or when
    /proc/cpuinfo cannot say."""
    try:
        with open(CPUINFO, encoding="ascii", errors="replace") as f:
            flags = next((line.partition(":")[2].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return ""
    level, flags = "", frozenset(flags)
    for name, needs in _AMD64_LEVELS:
        if not needs <= flags:
            break
        level = name
    return level


@dataclass(frozen=True)
class Platform:
    """A normalized platform: equal platforms compare equal (``arm64`` == ``aarch64/v8``)."""
    os: str
    architecture: str
    variant: str = ""

    def __post_init__(self):
        arch, variant = _normalize_arch(self.architecture, self.variant or "")
        object.__setattr__(self, "os", _normalize_os(self.os))
        object.__setattr__(self, "architecture", arch)
        object.__setattr__(self, "variant", variant)

    @classmethod
    def parse(cls, spec):
        """Parse ``os/arch[/variant]`` (or a lone ``os`` or ``arch``, completed from the host)."""
        if isinstance(spec, Platform):
            return spec
        if not isinstance(spec, str):
            raise InvalidReferenceError(f"invalid platform {spec!r}: expected os/arch[/variant]")
        parts = spec.split("/", 3)
        if not 1 <= len(parts) <= 3:
            raise InvalidReferenceError(f"invalid platform {_shown(spec)}: expected os/arch[/variant]")
        names = ("os or architecture",) if len(parts) == 1 else ("os", "architecture", "variant")
        for part, what in zip(parts, names):
            why = _component_error(part, what)
            if why is not None:
                raise InvalidReferenceError(f"invalid platform {_shown(spec)}: {why} "
                                            "(expected os/arch[/variant], e.g. linux/arm64)")
        if len(parts) == 1:
            if parts[0].lower() in _KNOWN_OS:
                host = cls.host()
                return cls(parts[0], host.architecture, host.variant)
            lone = cls("linux", parts[0])
            if lone.architecture not in _KNOWN_ARCH:  # containerd refuses it too, rather than guess
                raise InvalidReferenceError(f"invalid platform {spec!r}: not a known operating system or "
                                            "architecture (expected os/arch[/variant], e.g. linux/arm64)")
            return lone
        return cls(*parts)

    @classmethod
    def from_dict(cls, d, strict=False):
        """From an OCI descriptor ``platform`` object or an image config (``os``, ``architecture``, ``variant``).

        ``strict`` (an index entry's platform): each value must be one ``--platform`` takes,
        else ValueError saying which and why."""
        os_name, arch = d.get("os"), d.get("architecture")
        variant = d.get("variant") or ""
        if not isinstance(os_name, str) or not isinstance(arch, str) or not isinstance(variant, str):
            raise ValueError(f"platform needs string os and architecture: {d!r}")
        if strict:
            for value, what in ((os_name, "os"), (arch, "architecture")) + (((variant, "variant"),) if variant else ()):
                why = _component_error(value, what)
                if why is not None:
                    raise ValueError(why)
        return cls(os_name, arch, variant)

    @classmethod
    def host(cls):
        """The platform of this machine, from ``uname -m`` (Linux only, as lamina is)."""
        u = os.uname()
        return cls(u.sysname, *machine_to_arch(u.machine))

    @classmethod
    def native(cls):
        """The best platform this machine runs: the host, on x86-64 at its CPU's level.  What an
        index is matched against when no platform is asked for, as docker does (go-archvariant):
        an amd64/v3 image is this machine's if its CPU runs v3.  ``host()`` stays containerd's
        ``DefaultSpec`` (no level), which a lone os in ``--platform`` completes."""
        host = cls.host()
        if host.architecture == "amd64" and not host.variant:
            return cls(host.os, host.architecture, amd64_level())
        return host

    def matches(self, other):
        """Exact match after normalization (arm64 == arm64/v8, arm == arm/v7)."""
        return self == Platform.parse(other)

    def compatible(self):
        """Platforms this one can run, best first (containerd's ``platforms.Only``).

        amd64/vN also runs lower amd64 levels and 386; arm/vN runs lower arm
        variants down to v5; arm64/vN runs arm/vN and below.
        """
        p = self
        out = [p]
        level = _variant_number(p.variant)
        if p.architecture == "amd64":
            if level and level > 1:
                out += [Platform(p.os, "amd64", f"v{n}" if n > 1 else "") for n in range(level - 1, 0, -1)]
            out.append(Platform(p.os, "386"))
        elif p.architecture == "arm" and level:
            out += [Platform(p.os, "arm", f"v{n}") for n in range(level - 1, 4, -1)]
        elif p.architecture == "arm64":   # AArch32: arm of the same variant, and what that runs
            out += Platform(p.os, "arm", p.variant or "v8").compatible()
        return out

    def __str__(self):
        parts = [self.os, self.architecture] + ([self.variant] if self.variant else [])
        return "/".join(parts)


def _variant_number(variant):
    m = re.fullmatch(r"v(\d+)", variant, re.ASCII)
    return int(m.group(1)) if m else None
