"""The package version, importable without importing anything else of bmrag."""

__version__ = "0.1.0"
