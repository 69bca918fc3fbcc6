"""Where every file of a synth dataset directory lives, the bookkeeping JSON files, and the one
rule that tells a synth directory from any other folder (it holds ``.fertk/options.json``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fertk.core.errors import DatasetError
from fertk.core.io import atomic_write_bytes, json_bytes, sha256_bytes
from fertk.core.io import create_json_exclusive as create_json_exclusive_os

FORMATS: tuple[str, ...] = ("wds", "folder", "npy")
META_DIR = ".fertk"
OPTIONS_FILE = "options.json"
MANIFEST_FILE = "manifest.csv"
CARD_FILE = "dataset_card.json"


def shard_name(index: int) -> str:
    """'shard-000012'."""
    return f"shard-{index:06d}"


def sample_key(identity: int, emotion: str) -> str:
    """WebDataset/manifest key of one face: 'id000000012_anger' (no dots: WebDataset splits there)."""
    return f"id{identity:09d}_{emotion}"


@dataclass(frozen=True)
class DatasetLayout:
    """Where every file of a dataset directory lives, for one format."""

    root: Path
    fmt: str

    def __post_init__(self) -> None:
        if self.fmt not in FORMATS:
            raise DatasetError(f"unknown dataset format {self.fmt!r}", hint="choose one of " + ", ".join(FORMATS))

    @property
    def meta(self) -> Path:
        """The bookkeeping folder (.fertk)."""
        return self.root / META_DIR

    @property
    def options_path(self) -> Path:
        """.fertk/options.json."""
        return self.meta / OPTIONS_FILE

    @property
    def manifest_path(self) -> Path:
        """manifest.csv."""
        return self.root / MANIFEST_FILE

    @property
    def card_path(self) -> Path:
        """dataset_card.json."""
        return self.root / CARD_FILE

    def record_path(self, shard: int) -> Path:
        """The done-marker of a shard."""
        return self.meta / "records" / f"{shard_name(shard)}.json"

    def manifest_part_path(self, shard: int) -> Path:
        """A shard's manifest rows."""
        return self.meta / "manifest" / f"{shard_name(shard)}.csv"

    def shard_file(self, shard: int) -> str:
        """Relative path of a shard's main file (wds/npy); the images root for folder."""
        if self.fmt == "wds":
            return f"shards/{shard_name(shard)}.tar"
        if self.fmt == "npy":
            return f"shards/{shard_name(shard)}.images.npy"
        return "images"

    def labels_file(self, shard: int) -> str:
        """Relative path of a npy shard's labels array."""
        return f"shards/{shard_name(shard)}.labels.npy"

    def image_file(self, identity: int, emotion: str) -> str:
        """Relative path of one PNG in the folder format."""
        return f"images/{emotion}/id{identity:09d}.png"


# -- small file helpers: a failed write is one line naming the file ------------------------------

def write_error(path: Path | str, exc: OSError) -> DatasetError:
    """One-line error for a failed write (full disk, read-only file system, permissions)."""
    reason = exc.strerror or str(exc)
    return DatasetError(
        f"cannot write {path}: {reason}",
        hint="free space or choose a writable --out; rerun the same command to resume (finished shards are kept)",
    )


def write_bytes_atomic(path: Path, data: bytes, *, fsync: bool = True) -> None:
    """`fertk.core.io.atomic_write_bytes`, a failed write reported as a one-line DatasetError."""
    try:
        atomic_write_bytes(path, data, fsync=fsync)
    except OSError as exc:
        raise write_error(path, exc) from None


def write_json_atomic(path: Path, data: Any) -> None:
    """Pretty, key-sorted JSON written atomically."""
    write_bytes_atomic(path, json_bytes(data))


def create_json_exclusive(path: Path, data: Any) -> bool:
    """`fertk.core.io.create_json_exclusive`, a failed write reported as a one-line DatasetError."""
    try:
        return create_json_exclusive_os(path, data)
    except OSError as exc:
        raise write_error(path, exc) from None


def read_json(path: Path) -> Any:
    """Parsed JSON, or DatasetError naming the file."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DatasetError(f"missing {path}") from None
    except (OSError, ValueError) as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from None


# -- what a directory is -------------------------------------------------------------------------

def is_synth_dataset(path: str | Path) -> bool:
    """True when `path` is a directory made by `fertk synth`: it holds .fertk/options.json, which
    a run writes first (finished or not: see `fertk.data.shards.unfinished_reason`)."""
    return (Path(path).expanduser() / META_DIR / OPTIONS_FILE).is_file()


def read_options(root: str | Path) -> dict[str, Any]:
    """The options record of a synth dataset directory."""
    root = Path(root)
    path = root / META_DIR / OPTIONS_FILE
    if not path.is_file():
        raise DatasetError(f"{root} is not a fertk synth dataset (no {META_DIR}/{OPTIONS_FILE})",
                           hint="make one with `fertk synth --n N --out DIR`")
    return read_json(path)


def layout_of(root: str | Path) -> tuple[DatasetLayout, dict[str, Any]]:
    """(layout, options) of an existing dataset directory."""
    options = read_options(root)
    return DatasetLayout(Path(root), options["options"]["format"]), options


def options_fingerprint(record: dict[str, Any]) -> str:
    """Short hash of what a dataset is (content options + plan): stamped into every shard record."""
    key = json.dumps({"options": record.get("options"), "plan": record.get("plan")}, sort_keys=True)
    return sha256_bytes(key.encode())[:16]
