"""The package's version, in a module of its own: the core's modules read it without importing the
package, whose ``__init__`` reaches up to the Python API."""

__version__ = "0.1.0"
