"""File-mode plumbing shared by every writer: files fertk writes honour the user's umask.

Writers that make a temporary file first (``tempfile.mkstemp``, safetensors' ``save_file``)
get mode 0600 whatever the umask; `honour_umask` gives the file the mode a plain ``open()``
would (0644 under the usual umask 022) before it is renamed into place.
"""

from __future__ import annotations

import os
from pathlib import Path


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux /proc)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (briefly process-wide)
    os.umask(mask)
    return mask


def honour_umask(path: str | Path, base: int = 0o666) -> None:
    """chmod `path` to `base` minus the umask (what open() would have created)."""
    os.chmod(path, base & ~current_umask())
