"""keyard: a small service registry over HTTP."""

__version__ = "0.2.0"
