"""The package version, in one place (read by the package, export metadata and the build)."""
__version__ = "0.1.0"
