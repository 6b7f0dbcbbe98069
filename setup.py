"""Build the one compiled module, ``fastmgr._wire``.

``FASTMGR_CYTHON_ANNOTATE=1`` writes the HTML annotation next to the source;
``FASTMGR_DEBUG=1`` builds with assertions and ``-O0 -g`` for gdb and valgrind.
Both are switches spelled as in ``fastmgr/_settings.py`` (1/true/yes/on,
0/false/no/off; unset or empty: off), which the build cannot import.
"""
import glob
import os

from Cython.Build import cythonize
from setuptools import Extension, setup


def switch(name):
    text = os.environ.get(name, "").strip().lower()
    if text in ("", "0", "false", "no", "off"):
        return False
    if text in ("1", "true", "yes", "on"):
        return True
    raise ValueError("%s=%r: expected 1, true, yes or on (on) or 0, false, no or off (off)"
                     % (name, text))


debug = switch("FASTMGR_DEBUG")

# fastmgr/_wire.pyx is a map that includes the files of fastmgr/_wirelib/
# (.pxi code, .pxd declarations, .h C helpers): one extension
extension = Extension(
    "fastmgr._wire",
    ["fastmgr/_wire.pyx"],
    include_dirs=["fastmgr/_wirelib"],
    depends=sorted(glob.glob("fastmgr/_wirelib/*")) + ["fastmgr/_wire.pxd"],
    extra_compile_args=["-O0", "-g"] if debug else ["-O2"],
    undef_macros=["NDEBUG"] if debug else [],
)

setup(
    ext_modules=cythonize(
        [extension],
        language_level=3,
        annotate=switch("FASTMGR_CYTHON_ANNOTATE"),
        compiler_directives={"embedsignature": True},
    ),
)
