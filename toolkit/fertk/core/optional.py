"""Optional dependencies: import on demand, or a one-line error naming the pip extra."""

from __future__ import annotations

import importlib
from types import ModuleType

from fertk.core.errors import BackendUnavailableError


def require(module: str, *, extra: str, purpose: str) -> ModuleType:
    """Import `module` or raise BackendUnavailableError saying which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise BackendUnavailableError(
            f"{purpose} needs the Python package {module!r}, which is not installed ({exc})",
            hint=f"pip install 'fertk[{extra}]'") from None
