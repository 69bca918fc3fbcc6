"""fertk: facial-expression recognition with GAN-generated training data."""

__version__ = "0.1.0"

from fertk.errors import FertkError  # noqa: E402  (re-exported for callers)

__all__ = ["FertkError", "__version__"]
