"""The one cache root every fertk cache lives under (preprocessed faces, artifacts, judges)."""

from __future__ import annotations

import os
from pathlib import Path

# FERTK_CACHE_DIR is the variable; FERTK_CACHE, its earlier name, is still read when it is unset.
CACHE_ENVS = ("FERTK_CACHE_DIR", "FERTK_CACHE")


def cache_root() -> Path:
    """fertk's cache root: $FERTK_CACHE_DIR (or $FERTK_CACHE), else the user cache dir + /fertk."""
    for name in CACHE_ENVS:
        value = os.environ.get(name)
        if value:
            return Path(value).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("fertk", appauthor=False))


def cache_dir(kind: str) -> Path:
    """The folder of one cache under the root (``preprocess``, ``artifacts``, ``judges``)."""
    return cache_root() / kind
