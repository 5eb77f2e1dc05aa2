"""mechtest's version, apart from the package root so that any layer can key its caches on it."""

__version__ = "0.1.0"
