"""Imported first by children of a process that called fastmgr.install()."""
from ._install import install

install()
