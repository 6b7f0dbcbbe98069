"""Build the one compiled module, ``fastmgr._wire``.

``FASTMGR_CYTHON_ANNOTATE=1`` writes the HTML annotation next to the source;
``FASTMGR_DEBUG=1`` builds with assertions and ``-O0 -g`` for gdb and valgrind;
``FASTMGR_WERROR=1`` turns the compiler's warnings into errors (the wheel
script and CI build that way, so a new warning fails the build).  All three
are switches spelled as in ``fastmgr/_settings.py`` (1/true/yes/on,
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
warnings = ["-Wall"] + (["-Werror"] if switch("FASTMGR_WERROR") else [])

# what the extension is built from besides _wire.pyx: a change to any of
# them rebuilds it (Cython tracks .pxd/.pxi itself; the C compiler's .h are ours to list)
depends = sorted(glob.glob("fastmgr/**/*.h", recursive=True)
                 + glob.glob("fastmgr/**/*.pxi", recursive=True)
                 + glob.glob("fastmgr/**/*.pxd", recursive=True))

# fastmgr/_wire.pyx is a map that includes the files of fastmgr/_wirelib/
# (.pxi code, .pxd declarations, .h C helpers): one extension
extension = Extension(
    "fastmgr._wire",
    ["fastmgr/_wire.pyx"],
    include_dirs=["fastmgr/_wirelib"],
    depends=depends,
    extra_compile_args=(["-O0", "-g"] if debug else ["-O2"]) + warnings,
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
