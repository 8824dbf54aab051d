"""Build the native extension; all metadata lives in pyproject.toml."""
import os

from Cython.Build import cythonize
from setuptools import Extension, setup

# Portable C only: no -march, so one wheel runs on every x86_64 / aarch64.
extra = ["-O2", "-fno-strict-aliasing"]
if os.environ.get("LAMINA_DEBUG_BUILD"):
    extra = ["-O0", "-g"]

extensions = [
    Extension(
        "lamina._extract",
        ["native/extract.pyx"],
        include_dirs=["native"],
        extra_compile_args=extra,
        define_macros=[("_GNU_SOURCE", "1")],
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
