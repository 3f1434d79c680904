"""The package's version (a leaf: every module may import it; `tinylm.__version__` re-exports it)."""

__version__ = "0.1.0"
