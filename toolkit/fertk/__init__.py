"""fertk: facial-expression recognition with GAN-generated training data."""

from fertk.core.errors import FertkError
from fertk.core.versions import __version__

__all__ = ["FertkError", "__version__"]
