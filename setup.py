"""Build the native extension; all metadata lives in pyproject.toml."""
import os

from Cython.Build import cythonize
from setuptools import Extension, setup

# Portable C only: no -march, so one wheel runs on every x86_64 / aarch64.
extra = ["-O2", "-fno-strict-aliasing"]
if os.environ.get("LAMINA_DEBUG_BUILD"):
    extra = ["-O0", "-g"]

BLAKE3_C = ["blake3", "blake3_dispatch", "blake3_portable",
            "simd_sse2", "simd_sse41", "simd_avx2", "simd_avx512", "simd_neon"]

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
    # BLAKE3 of store file objects: the official C sources, SIMD back ends chosen at run time.
    Extension(
        "lamina._objects",
        ["native/objects.pyx"] + [f"native/vendor/blake3/{n}.c" for n in BLAKE3_C],
        include_dirs=["native", "native/vendor/blake3"],
        extra_compile_args=extra,
    ),
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        include_path=["native"],
        compiler_directives={"boundscheck": False, "wraparound": False, "cdivision": True},
    ),
)
