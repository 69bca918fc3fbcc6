"""Files that appear whole or not at all, their digests, and the file mode every writer gives them.

One rule for every writer in fertk: write beside the target under ``.<name>.<pid>.tmp`` (the pid
lets a later run tell a dead writer's leftovers from a live one's), optionally fsync, then
``os.replace`` — a reader sees the old file or the new one, never half of one. Writers that make
a temporary file first (``tempfile.mkstemp``, safetensors' ``save_file``) get mode 0600 whatever
the umask; `honour_umask` gives the file the mode a plain ``open()`` would before it is renamed.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO


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


def temp_path_for(path: str | Path) -> Path:
    """The temporary name a writer of `path` uses in this process: ``.<name>.<pid>.tmp`` beside it."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def unlink_quietly(path: str | Path) -> None:
    """Remove a file if it can be: cleanup never replaces the error that caused it."""
    try:
        Path(path).unlink(missing_ok=True)
    except OSError:
        pass


@contextmanager
def atomic_target(path: str | Path, *, fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write `path` through (any writer: torch.save, cv2, savefig);
    on success it is renamed into place with the umask's mode, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(path)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        honour_umask(tmp)
        os.replace(tmp, path)
    finally:
        unlink_quietly(tmp)


def atomic_write_bytes(path: str | Path, data: bytes, *, fsync: bool = True) -> Path:
    """Write `data` to `path` through a temporary file and a rename; raises OSError, leaves no temp."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(path)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        unlink_quietly(tmp)
    return path


def atomic_write_text(path: str | Path, text: str, *, fsync: bool = True) -> Path:
    """UTF-8 text version of `atomic_write_bytes`."""
    return atomic_write_bytes(path, text.encode("utf-8"), fsync=fsync)


def json_bytes(data: Any) -> bytes:
    """fertk's JSON file form: indented, keys sorted, one trailing newline."""
    return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()


def atomic_write_json(path: str | Path, data: Any, *, fsync: bool = True) -> Path:
    """`json_bytes(data)` written atomically."""
    return atomic_write_bytes(path, json_bytes(data), fsync=fsync)


def create_json_exclusive(path: str | Path, data: Any) -> bool:
    """Write JSON to `path` only if no file is there yet (all or nothing); False when one already was.

    The complete file is written aside and hard-linked into place: of several processes creating
    the same file at once exactly one wins, and no reader sees a partial file. On a file system
    without hard links it falls back to a rename (last writer wins). Raises OSError."""
    path = Path(path)
    tmp = temp_path_for(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(json_bytes(data))
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError:  # no hard links here (some network / FAT file systems)
            if path.exists():
                return False
            os.replace(tmp, path)
        return True
    finally:
        unlink_quietly(tmp)


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """torch.save through `atomic_target` (a crash never leaves a torn checkpoint)."""
    import torch

    with atomic_target(path) as tmp:
        torch.save(obj, str(tmp))
    return Path(path)


def save_figure(figure: Any, path: str | Path, *, dpi: int = 120) -> Path:
    """Render a matplotlib Figure to PNG atomically (no pyplot, so no global backend state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return atomic_write_bytes(path, buffer.getvalue())


def sha256_bytes(data: bytes | memoryview) -> str:
    """Hex sha256 of bytes."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class HashingWriter:
    """A write-only binary file that hashes and counts what passes through it."""

    def __init__(self, path: str | Path, opener: Callable[[Path], BinaryIO] | None = None) -> None:
        self.path = Path(path)
        self.fh: BinaryIO = (opener or (lambda p: open(p, "wb")))(self.path)  # noqa: SIM115 - closed in close()
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes | memoryview) -> int:
        """Write, hash and count `data`."""
        self.fh.write(data)
        self.sha.update(data)
        self.size += len(data)
        return len(data)

    def close(self, *, fsync: bool = True) -> None:
        """Flush (and fsync) and close; safe to call twice."""
        if not self.fh.closed:
            self.fh.flush()
            if fsync:
                os.fsync(self.fh.fileno())
            self.fh.close()

    def discard(self) -> None:
        """Close and remove the file."""
        if not self.fh.closed:
            self.fh.close()
        self.path.unlink(missing_ok=True)
