"""Build the native extension; all metadata lives in pyproject.toml."""
import os
import subprocess
import sysconfig
import tempfile

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_py import build_py

# Portable C only: no -march, so one wheel runs on every x86_64 / aarch64.
extra = ["-O2", "-fno-strict-aliasing"]
if os.environ.get("LAMINA_DEBUG_BUILD"):
    extra = ["-O0", "-g"]

BLAKE3_C = ["blake3", "blake3_dispatch", "blake3_portable",
            "simd_sse2", "simd_sse41", "simd_avx2", "simd_avx512", "simd_neon"]


def _links(header, symbol, lib):
    """Whether a program using ``symbol`` from ``header`` compiles and links with ``-l<lib>``."""
    cc = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as f:
            f.write(f"#include <{header}>\nint main(void) {{ return (int)(long)&{symbol}; }}\n")
        try:
            return subprocess.run(cc + [src, "-o", os.path.join(tmp, "probe"), f"-l{lib}"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0
        except OSError:
            return False


# The native stage 1 of the layer pipeline inflates with ISA-L (gzip) and libzstd when they are
# there at build time (Debian: libisal-dev, libzstd-dev); a codec that is not falls back to the
# Python pipeline (isal / zstandard packages) at run time.  LAMINA_NO_NATIVE_CODECS=1 builds neither.
codecs = [] if os.environ.get("LAMINA_NO_NATIVE_CODECS") else [
    (macro, lib) for macro, header, symbol, lib in (
        ("LAMINA_HAVE_ISAL", "isa-l/igzip_lib.h", "isal_inflate", "isal"),
        ("LAMINA_HAVE_ZSTD", "zstd.h", "ZSTD_decompressStream", "zstd"),
    ) if _links(header, symbol, lib)]

extensions = [
    # The extractor hashes file data with BLAKE3 as it writes it (store dedup).
    Extension(
        "lamina._extract",
        ["native/extract.pyx"] + [f"native/vendor/blake3/{n}.c" for n in BLAKE3_C],
        include_dirs=["native", "native/vendor/blake3"],
        extra_compile_args=extra,
        define_macros=[("_GNU_SOURCE", "1")],
    ),
    # Merging the store's snapshots into a rootfs (store/flatten.py)
    Extension(
        "lamina._flatten",
        ["native/flatten.pyx"],
        include_dirs=["native"],
        extra_compile_args=extra,
        define_macros=[("_GNU_SOURCE", "1")],
    ),
    # Stage 1 of the layer pipeline: read, sha256, inflate without the GIL (layer.py).
    Extension(
        "lamina._pipeline",
        ["native/pipeline.pyx"],
        include_dirs=["native"],
        extra_compile_args=extra,
        define_macros=[(macro, "1") for macro, _ in codecs],
        libraries=[lib for _, lib in codecs] + ["dl"],
    ),
    # BLAKE3 of store file objects: the official C sources, SIMD back ends chosen at run time.
    Extension(
        "lamina._objects",
        ["native/objects.pyx"] + [f"native/vendor/blake3/{n}.c" for n in BLAKE3_C],
        include_dirs=["native", "native/vendor/blake3"],
        extra_compile_args=extra,
    ),
]

class build_py_pruned(build_py):
    """build_py that leaves in build/lib only the modules src/ has now.  setuptools copies the
    sources into build/lib and never removes one (pypa/setuptools#1871), and pip builds in the
    checkout: a module deleted or renamed since an earlier build went on into every wheel built
    there (a reverted module was installed again).  Compiled modules are build_ext's: kept."""

    def run(self):
        super().run()
        wanted = {os.path.abspath(p) for p in self.get_outputs(include_bytecode=False)}
        for top in {package.split(".")[0] for package in self.packages or ()}:  # a deleted subpackage too
            for parent, _, names in os.walk(os.path.join(self.build_lib, top)):
                for name in names:
                    path = os.path.abspath(os.path.join(parent, name))
                    if name.endswith(".py") and path not in wanted:
                        os.unlink(path)


setup(
    cmdclass={"build_py": build_py_pruned},
    ext_modules=cythonize(
        extensions,
        language_level=3,
        include_path=["native"],
        compiler_directives={"boundscheck": False, "wraparound": False, "cdivision": True},
    ),
)
