"""The one place the version is written: setuptools reads it for the
package metadata, and ``fastmgr.__version__`` is this."""
__version__ = "0.1.0"
