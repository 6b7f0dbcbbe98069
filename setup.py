"""Build the one compiled module, ``fastmgr._wire``.

``FASTMGR_CYTHON_ANNOTATE=1`` writes the HTML annotation next to the source;
``FASTMGR_DEBUG=1`` builds with assertions and ``-O0 -g`` for gdb and valgrind.
"""
import os

from Cython.Build import cythonize
from setuptools import Extension, setup

debug = os.environ.get("FASTMGR_DEBUG") == "1"

extension = Extension(
    "fastmgr._wire",
    ["fastmgr/_wire.pyx"],
    extra_compile_args=["-O0", "-g"] if debug else ["-O2"],
    undef_macros=["NDEBUG"] if debug else [],
)

setup(
    ext_modules=cythonize(
        [extension],
        language_level=3,
        annotate=os.environ.get("FASTMGR_CYTHON_ANNOTATE") == "1",
        compiler_directives={"embedsignature": True},
    ),
)
