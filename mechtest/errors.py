"""One exception root, so callers can catch everything mechtest raises on bad input."""


class MechtestError(Exception):
    """Root of every error mechtest raises on purpose."""


class ModelLoadError(MechtestError):
    """A checkpoint could not be loaded (missing path, no config, unsupported architecture...)."""


class DeviceError(MechtestError, ValueError):
    """A device that does not exist here (bogus name, CUDA without CUDA, a GPU index past the last)."""


class ArchitectureError(MechtestError):
    """The model's architecture is not in the head-access table."""


class HeadIndexError(MechtestError, IndexError):
    """A layer, head or position is outside the model's shape."""


class TokenizerError(MechtestError, ValueError):
    """A word is not a single token in context, or too few usable words remain."""


class TaskError(MechtestError, ValueError):
    """An impossible dataset request (0 boxes, more boxes than labels, duplicates...)."""


class CacheError(MechtestError):
    """The activation cache could not be read or written."""


class CircuitError(MechtestError, ValueError):
    """A circuit file is malformed or does not fit the model's shape."""


class ClaimError(MechtestError, ValueError):
    """A claim file is malformed (unknown metric, bad expect, unknown circuit...)."""


class SnapshotError(MechtestError, ValueError):
    """A snapshot file cannot be read as a head-level snapshot."""


class ModelMismatchError(MechtestError, ValueError):
    """Two models that a method compares head by head differ in shape or tokenizer."""
