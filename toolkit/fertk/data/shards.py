"""Synthetic-dataset storage: shard writers and readers for three formats, the manifest, the
per-shard records that mark a shard finished, verification, and `read_arrays` for training.

Layout of a dataset directory (every format):

    .fertk/options.json          what the dataset is (options + seed plan) and the execution
                                 choices that decide its bytes; written first (created exclusively)
    .fertk/records/shard-NNNNNN.json   written last, by rename: its presence means "shard done";
                                 it holds the size and sha256 of every file of the shard and
                                 the execution choices it was made under
    .fertk/manifest/shard-NNNNNN.csv   the shard's manifest rows (no header)
    manifest.csv                 all rows in shard order, merged once every shard is done
    dataset_card.json            models, hashes, engine, versions, counts, timing

and per format:

    wds     shards/shard-NNNNNN.tar         WebDataset: <key>.png, <key>.cls, <key>.json
    npy     shards/shard-NNNNNN.images.npy  uint8 [faces, H, W]  (np.load(mmap_mode="r"))
            shards/shard-NNNNNN.labels.npy  int64 [faces]
    folder  images/<emotion>/<identity>.png an ImageFolder root (torchvision / Keras)

The manifest is CSV (always, so the same options give the same bytes on every machine) with
columns MANIFEST_COLUMNS; `pandas.read_csv(DIR / "manifest.csv")` reads it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fertk.data.records import FaceArrays
from fertk.core.errors import DatasetError
from fertk.core.io import HashingWriter, atomic_write_bytes, json_bytes, sha256_bytes, sha256_file, unlink_quietly
from fertk.core.io import create_json_exclusive as _create_json_exclusive

FORMATS: tuple[str, ...] = ("wds", "folder", "npy")
MANIFEST_COLUMNS: tuple[str, ...] = (
    "key", "shard", "offset", "file", "identity", "seed", "emotion", "label", "intensity", "attempt", "score",
)
META_DIR = ".fertk"
OPTIONS_FILE = "options.json"
MANIFEST_FILE = "manifest.csv"
CARD_FILE = "dataset_card.json"
SOURCE_NAME = "fertk-synth"
# zlib level 1, Huffman-only: measured fastest and smallest on 64x64 gray faces (~2.1 kB each).
PNG_COMPRESSION = 1


# -- small file helpers ------------------------------------------------------------------------

def _io_error(path: Path | str, exc: OSError) -> DatasetError:
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
        raise _io_error(path, exc) from None


def write_json_atomic(path: Path, data: Any) -> None:
    """Pretty, key-sorted JSON written atomically."""
    write_bytes_atomic(path, json_bytes(data))


def create_json_exclusive(path: Path, data: Any) -> bool:
    """`fertk.core.io.create_json_exclusive`, a failed write reported as a one-line DatasetError."""
    try:
        return _create_json_exclusive(path, data)
    except OSError as exc:
        raise _io_error(path, exc) from None


# -- layout ----------------------------------------------------------------------------------

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


# -- encoding ----------------------------------------------------------------------------------

def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of one uint8 gray image (cv2 releases the GIL while it compresses)."""
    import cv2

    ok, buf = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION,
                                           cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY])
    if not ok:
        raise DatasetError(f"PNG encoding failed for an image of shape {image.shape}")
    return buf.tobytes()


def decode_png(data: bytes) -> np.ndarray:
    """uint8 gray image from PNG bytes."""
    import cv2

    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise DatasetError("cannot decode a PNG image (corrupt bytes)")
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    return image


def _tar_header_template() -> tuple[bytearray, int]:
    """The fixed part of every member header (mode 644, uid/gid 0, mtime 0, ustar) and its byte sum."""
    buf = bytearray(512)
    buf[100:108] = b"0000644\0"
    buf[108:116] = b"0000000\0"
    buf[116:124] = b"0000000\0"
    buf[136:148] = b"00000000000\0"
    buf[148:156] = b" " * 8      # the checksum field counts as spaces while summing
    buf[156:157] = b"0"
    buf[257:265] = b"ustar\x0000"
    return buf, sum(buf)


_TAR_TEMPLATE, _TAR_TEMPLATE_SUM = _tar_header_template()


def _tar_header(name: str, size: int) -> bytes:
    """A POSIX ustar header with fixed metadata (mode 644, uid/gid 0, mtime 0): byte-reproducible."""
    encoded = name.encode()
    if len(encoded) > 100:
        raise DatasetError(f"tar member name too long: {name}")
    size_field = b"%011o\0" % size
    buf = bytearray(_TAR_TEMPLATE)
    buf[0:len(encoded)] = encoded
    buf[124:136] = size_field
    buf[148:156] = b"%06o\0 " % (_TAR_TEMPLATE_SUM + sum(encoded) + sum(size_field))
    return bytes(buf)


_TAR_RECORD = 10240  # GNU tar's default record size; archives are padded to a multiple of it


# -- manifest rows -----------------------------------------------------------------------------

@dataclass
class ShardRows:
    """Per-face metadata of (part of) a shard, in face order: identity-major, emotion-minor."""

    identity: np.ndarray    # int64 [F]
    seed: np.ndarray        # uint64 [F]
    emotion: list[str]      # [F]
    label: np.ndarray       # int64 [F]
    intensity: np.ndarray   # float32 [F]
    attempt: np.ndarray     # int64 [F]
    score: np.ndarray | None = None  # float32 [F] filter scores, None without a filter

    def __len__(self) -> int:
        return len(self.identity)

    def keys(self) -> list[str]:
        """Sample keys."""
        return [sample_key(int(i), e) for i, e in zip(self.identity, self.emotion)]


def _manifest_lines(rows: ShardRows, shard: int, start_offset: int, files: Sequence[str]) -> list[str]:
    identities, seeds, labels = rows.identity.tolist(), rows.seed.tolist(), rows.label.tolist()
    attempts = rows.attempt.tolist()
    intensities = [f"{v:.9g}" for v in rows.intensity.tolist()]
    scores = [""] * len(identities) if rows.score is None else [f"{v:.6f}" for v in rows.score.tolist()]
    return [
        f"id{identities[j]:09d}_{rows.emotion[j]},{shard},{start_offset + j},{files[j]},{identities[j]},"
        f"{seeds[j]},{rows.emotion[j]},{labels[j]},{intensities[j]},{attempts[j]},{scores[j]}\n"
        for j in range(len(identities))
    ]


# -- writers -----------------------------------------------------------------------------------

@dataclass
class ShardResult:
    """What a finished shard wrote: files with sizes and hashes, and its manifest part."""

    shard: int
    faces: int
    files: dict[str, dict[str, Any]] = field(default_factory=dict)


class ShardWriter:
    """Streams one shard's faces to temporary files; `commit` renames them into place and writes
    the manifest part and (last) the shard record. Subclasses implement the format."""

    needs_png = False

    def __init__(self, layout: DatasetLayout, shard: int, faces: int, image_shape: tuple[int, int]) -> None:
        self.layout = layout
        self.shard = shard
        self.faces = faces
        self.image_shape = image_shape
        self.written = 0
        self.manifest_lines: list[str] = []
        self.result = ShardResult(shard, faces)
        self.target: Path = layout.root  # named in write errors; subclasses set their shard file

    def add(self, images: np.ndarray, rows: ShardRows, pngs: Sequence[bytes] | None = None) -> None:
        """Append faces [F', H, W] uint8 with their rows (and PNG bytes when the format needs them)."""
        if images.shape[1:] != self.image_shape or images.dtype != np.uint8:
            raise DatasetError(f"shard {self.shard}: expected uint8 faces of shape {self.image_shape}, "
                               f"got {images.dtype} {images.shape[1:]}")
        if self.written + len(images) > self.faces:
            raise DatasetError(f"shard {self.shard}: more faces than planned ({self.faces})")
        if self.needs_png and pngs is None:
            pngs = [encode_png(im) for im in images]
        try:
            files = self._add_impl(images, rows, pngs)
        except OSError as exc:
            raise _io_error(getattr(exc, "filename", None) or self.target, exc) from None
        self.manifest_lines.extend(_manifest_lines(rows, self.shard, self.written, files))
        self.written += len(images)

    def commit(self, record_extra: dict[str, Any] | None = None) -> ShardResult:
        """Finish the shard: rename data files into place, then manifest part, then the record."""
        if self.written != self.faces:
            raise DatasetError(f"shard {self.shard}: {self.written} faces written, {self.faces} planned")
        try:
            self._commit_impl()
        except OSError as exc:
            raise _io_error(getattr(exc, "filename", None) or self.target, exc) from None
        part = "".join(self.manifest_lines).encode()
        part_path = self.layout.manifest_part_path(self.shard)
        write_bytes_atomic(part_path, part)
        record = {
            "shard": self.shard,
            "faces": self.faces,
            "format": self.layout.fmt,
            "files": self.result.files,
            "manifest": {"file": part_path.relative_to(self.layout.root).as_posix(), "bytes": len(part),
                         "sha256": sha256_bytes(part), "rows": len(self.manifest_lines)},
            **(record_extra or {}),
        }
        write_json_atomic(self.layout.record_path(self.shard), record)
        return self.result

    def abort(self) -> None:
        """Drop temporary files (the shard stays unfinished)."""
        try:
            self._abort_impl()
        except OSError:
            pass

    def _add_impl(self, images: np.ndarray, rows: ShardRows, pngs: Sequence[bytes] | None) -> list[str]:
        raise NotImplementedError

    def _commit_impl(self) -> None:
        raise NotImplementedError

    def _abort_impl(self) -> None:
        pass


class WdsShardWriter(ShardWriter):
    """WebDataset tar: per face <key>.png, <key>.cls (label index) and <key>.json (metadata)."""

    needs_png = True

    def __init__(self, layout: DatasetLayout, shard: int, faces: int, image_shape: tuple[int, int]) -> None:
        super().__init__(layout, shard, faces, image_shape)
        self.rel = layout.shard_file(shard)
        self.final = self.target = layout.root / self.rel
        self.tmp = self.final.with_name(self.final.name + ".tmp")
        try:
            self.final.parent.mkdir(parents=True, exist_ok=True)
            self.out = HashingWriter(self.tmp)
        except OSError as exc:
            raise _io_error(self.tmp, exc) from None

    def _member(self, chunks: list[bytes], name: str, data: bytes) -> None:
        chunks.append(_tar_header(name, len(data)))
        chunks.append(data)
        pad = -len(data) % 512
        if pad:
            chunks.append(b"\0" * pad)

    def _add_impl(self, images: np.ndarray, rows: ShardRows, pngs: Sequence[bytes] | None) -> list[str]:
        assert pngs is not None
        chunks: list[bytes] = []
        identities, seeds = rows.identity.tolist(), rows.seed.tolist()
        labels, intensities = rows.label.tolist(), rows.intensity.tolist()
        for j, key in enumerate(rows.keys()):
            # Same text as json.dumps(..., sort_keys=True), written out: this runs per face.
            meta = (f'{{"emotion": "{rows.emotion[j]}", "identity": {identities[j]}, '
                    f'"intensity": {intensities[j]!r}, "label": {labels[j]}, "seed": {seeds[j]}}}').encode()
            self._member(chunks, key + ".png", pngs[j])
            self._member(chunks, key + ".cls", b"%d" % labels[j])
            self._member(chunks, key + ".json", meta)
        self.out.write(b"".join(chunks))
        return [self.rel] * len(identities)

    def _commit_impl(self) -> None:
        end = b"\0" * 1024
        self.out.write(end + b"\0" * (-(self.out.size + len(end)) % _TAR_RECORD))
        self.out.close()
        os.replace(self.tmp, self.final)
        self.result.files[self.rel] = {"bytes": self.out.size, "sha256": self.out.sha.hexdigest()}

    def _abort_impl(self) -> None:
        self.out.discard()


class NpyShardWriter(ShardWriter):
    """Raw uint8 [F, H, W] .npy written as a stream (header first), plus int64 labels .npy."""

    def __init__(self, layout: DatasetLayout, shard: int, faces: int, image_shape: tuple[int, int]) -> None:
        super().__init__(layout, shard, faces, image_shape)
        self.rel = layout.shard_file(shard)
        self.labels_rel = layout.labels_file(shard)
        self.final = self.target = layout.root / self.rel
        self.tmp = self.final.with_name(self.final.name + ".tmp")
        self.labels: list[np.ndarray] = []
        try:
            self.final.parent.mkdir(parents=True, exist_ok=True)
            self.out = HashingWriter(self.tmp)
            header = {"descr": "|u1", "fortran_order": False, "shape": (faces, *image_shape)}
            np.lib.format.write_array_header_1_0(self.out, header)
        except OSError as exc:
            raise _io_error(self.tmp, exc) from None

    def _add_impl(self, images: np.ndarray, rows: ShardRows, pngs: Sequence[bytes] | None) -> list[str]:
        self.out.write(memoryview(np.ascontiguousarray(images)).cast("B"))
        self.labels.append(np.asarray(rows.label, dtype=np.int64))
        return [self.rel] * len(images)

    def _commit_impl(self) -> None:
        self.out.close()
        buf = io.BytesIO()
        np.save(buf, np.concatenate(self.labels) if self.labels else np.zeros(0, np.int64))
        labels = buf.getvalue()
        write_bytes_atomic(self.layout.root / self.labels_rel, labels)
        os.replace(self.tmp, self.final)
        self.result.files[self.rel] = {"bytes": self.out.size, "sha256": self.out.sha.hexdigest()}
        self.result.files[self.labels_rel] = {"bytes": len(labels), "sha256": sha256_bytes(labels)}

    def _abort_impl(self) -> None:
        self.out.discard()


class FolderShardWriter(ShardWriter):
    """ImageFolder tree: images/<emotion>/id<identity>.png, each file written then renamed."""

    needs_png = True

    def _add_impl(self, images: np.ndarray, rows: ShardRows, pngs: Sequence[bytes] | None) -> list[str]:
        assert pngs is not None
        rels = []
        made: set[Path] = set()
        for j in range(len(images)):
            rel = self.layout.image_file(int(rows.identity[j]), rows.emotion[j])
            final = self.layout.root / rel
            if final.parent not in made:
                final.parent.mkdir(parents=True, exist_ok=True)
                made.add(final.parent)
            tmp = final.with_name(final.name + ".tmp")
            with open(tmp, "wb") as fh:
                fh.write(pngs[j])
            os.replace(tmp, final)
            self.result.files[rel] = {"bytes": len(pngs[j]), "sha256": sha256_bytes(pngs[j])}
            rels.append(rel)
        return rels

    def _commit_impl(self) -> None:
        pass


_WRITERS: dict[str, type[ShardWriter]] = {"wds": WdsShardWriter, "npy": NpyShardWriter, "folder": FolderShardWriter}


def open_shard_writer(layout: DatasetLayout, shard: int, faces: int, image_shape: tuple[int, int]) -> ShardWriter:
    """The writer for the layout's format."""
    return _WRITERS[layout.fmt](layout, shard, faces, image_shape)


# -- bookkeeping: records, options, manifest merge --------------------------------------------

def read_json(path: Path) -> Any:
    """Parsed JSON, or DatasetError naming the file."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DatasetError(f"missing {path}") from None
    except (OSError, ValueError) as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from None


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
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def shard_done(layout: DatasetLayout, shard: int, fingerprint: str | None = None,
               execution: dict[str, Any] | None = None) -> bool:
    """A shard is finished when its record exists (made under `fingerprint` and, when the record
    holds them, the byte-affecting `execution` choices, when given) and its files have the recorded
    sizes. Records from before execution choices were recorded count as made under any."""
    path = layout.record_path(shard)
    if not path.is_file():
        return False
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    if fingerprint is not None and record.get("fingerprint") != fingerprint:
        return False
    if execution is not None and "execution" in record and record["execution"] != execution:
        return False
    if layout.fmt == "folder":  # per-file sizes are checked by verify; stat-ing 6 000 files here is waste
        return layout.manifest_part_path(shard).is_file()
    for rel, info in record.get("files", {}).items():
        target = layout.root / rel
        if not target.is_file() or target.stat().st_size != info["bytes"]:
            return False
    return layout.manifest_part_path(shard).is_file()


def _record_fingerprint(layout: DatasetLayout, shard: int) -> str | None:
    try:
        return json.loads(layout.record_path(shard).read_text()).get("fingerprint")
    except (OSError, ValueError):
        return None


def merge_manifest(layout: DatasetLayout, num_shards: int, fingerprint: str | None = None) -> bool:
    """Write manifest.csv from every shard's part, in shard order, if all are done; idempotent."""
    if not all(layout.record_path(s).is_file() for s in range(num_shards)):
        return False
    if fingerprint is not None and any(_record_fingerprint(layout, s) != fingerprint for s in range(num_shards)):
        return False
    tmp = layout.manifest_path.with_name(f".{MANIFEST_FILE}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as out:
            out.write((",".join(MANIFEST_COLUMNS) + "\n").encode())
            for s in range(num_shards):
                with open(layout.manifest_part_path(s), "rb") as part:
                    while block := part.read(1 << 20):
                        out.write(block)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, layout.manifest_path)
    except OSError as exc:
        unlink_quietly(tmp)
        raise _io_error(layout.manifest_path, exc) from None
    return True


def remove_stale_temps(layout: DatasetLayout, shard: int) -> int:
    """Delete the temporary files a killed writer of `shard` can leave (record, manifest part and
    data files, any process id); only the shard's owner may call this. Returns how many went."""
    name = shard_name(shard)
    patterns = [(layout.meta / "records", f".{name}.json.*.tmp"), (layout.meta / "manifest", f".{name}.csv.*.tmp")]
    if layout.fmt != "folder":
        patterns.append((layout.root / "shards", f".{name}.*.tmp"))      # labels.npy written atomically
        patterns.append((layout.root / "shards", f"{name}.*.tmp"))       # streamed tar / npy
    removed = 0
    for folder, pattern in patterns:
        if not folder.is_dir():
            continue
        for path in folder.glob(pattern):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def remove_stale_dataset_temps(layout: DatasetLayout, *, min_age_s: float = 0.0, live: Any = None) -> int:
    """Delete dataset-level temporary files (options, manifest, card) whose writer process is gone
    and that were last written at least `min_age_s` ago.

    `live(pid) -> bool` says whether a process id may still be writing; the default asks this
    host's process table, which knows nothing of other hosts: where another host may write into
    the same directory, pass a `min_age_s` no live write lasts."""
    def alive(pid: int) -> bool:
        if pid == os.getpid():
            return True
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except OSError:  # exists, owned by someone else
            return True
        return True

    live = live or alive
    removed = 0
    for folder, stem in ((layout.root, MANIFEST_FILE), (layout.root, CARD_FILE), (layout.meta, OPTIONS_FILE)):
        if not folder.is_dir():
            continue
        for path in folder.glob(f".{stem}.*.tmp"):
            pid = path.name[len(stem) + 2:-len(".tmp")]
            try:
                age = time.time() - path.stat().st_mtime
            except OSError:
                continue
            if pid.isdigit() and not live(int(pid)) and age >= min_age_s:
                path.unlink(missing_ok=True)
                removed += 1
    return removed


def remove_shard(layout: DatasetLayout, shard: int, *, identities: range | None = None,
                 emotions: Sequence[str] = ()) -> None:
    """Delete a shard's record, manifest part, data files and leftovers (used by --force)."""
    layout.record_path(shard).unlink(missing_ok=True)
    layout.manifest_part_path(shard).unlink(missing_ok=True)
    if layout.fmt == "folder":
        for identity in identities or ():
            for emotion in emotions:
                path = layout.root / layout.image_file(identity, emotion)
                path.unlink(missing_ok=True)
                path.with_name(path.name + ".tmp").unlink(missing_ok=True)
        return
    for rel in (layout.shard_file(shard), layout.labels_file(shard) if layout.fmt == "npy" else None):
        if rel:
            path = layout.root / rel
            path.unlink(missing_ok=True)
            path.with_name(path.name + ".tmp").unlink(missing_ok=True)


# -- readers -----------------------------------------------------------------------------------

def _read_manifest_part(layout: DatasetLayout, shard: int) -> list[list[str]]:
    path = layout.manifest_part_path(shard)
    try:
        text = path.read_text()
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc.strerror or exc}") from None
    return [line.split(",") for line in text.splitlines() if line]


def _iter_tar(path: Path) -> Iterator[tuple[str, bytes]]:
    with tarfile.open(path, "r:") as tar:
        for member in tar:
            if member.isfile():
                fh = tar.extractfile(member)
                assert fh is not None
                yield member.name, fh.read()


def _shard_images(layout: DatasetLayout, shard: int, rows: list[list[str]]) -> np.ndarray:
    col = {name: i for i, name in enumerate(MANIFEST_COLUMNS)}
    if layout.fmt == "npy":
        return np.load(layout.root / layout.shard_file(shard), mmap_mode="r")
    if layout.fmt == "wds":
        pngs = {name[:-4]: data for name, data in _iter_tar(layout.root / layout.shard_file(shard))
                if name.endswith(".png")}
        try:
            return np.stack([decode_png(pngs[r[col["key"]]]) for r in rows]) if rows else np.zeros((0, 0, 0), np.uint8)
        except KeyError as exc:
            raise DatasetError(f"{layout.shard_file(shard)} lacks sample {exc.args[0]} listed in the manifest") from None
    images = []
    for r in rows:
        path = layout.root / r[col["file"]]
        try:
            images.append(decode_png(path.read_bytes()))
        except OSError as exc:
            raise DatasetError(f"cannot read {path}: {exc.strerror or exc}") from None
    return np.stack(images) if images else np.zeros((0, 0, 0), np.uint8)


def iter_shard_arrays(path: str | Path, classes: Sequence[str] | None = None) -> Iterator[FaceArrays]:
    """One FaceArrays per finished shard, in shard order (memory: one shard at a time)."""
    layout, options = layout_of(path)
    emotions = tuple(options["plan"]["emotions"])
    classes = tuple(classes) if classes is not None else emotions
    index = {c: i for i, c in enumerate(classes)}
    col = {name: i for i, name in enumerate(MANIFEST_COLUMNS)}
    num_shards = int(options["num_shards"])
    missing = [s for s in range(num_shards) if not shard_done(layout, s)]
    if missing:
        raise DatasetError(f"{path} is incomplete: {len(missing)} of {num_shards} shards unfinished",
                           hint="rerun the same `fertk synth` command to finish it")
    for s in range(num_shards):
        rows = _read_manifest_part(layout, s)
        images = _shard_images(layout, s, rows)
        keep = np.array([r[col["emotion"]] in index for r in rows], dtype=bool)
        kept = [r for r, k in zip(rows, keep) if k]
        yield FaceArrays(
            images=np.asarray(images[keep]) if len(rows) else images,
            labels=np.array([index[r[col["emotion"]]] for r in kept], dtype=np.int64),
            classes=classes,
            subjects=np.array([f"synth-{r[col['identity']]}" for r in kept], dtype=object),
            sources=np.array([SOURCE_NAME] * len(kept), dtype=object),
            keys=[r[col["key"]] for r in kept],
            meta={"shard": s},
        )


def read_arrays(path: str | Path, classes: Sequence[str] | None = None) -> FaceArrays:
    """A whole synth dataset (any format) in memory; `classes` selects and orders the labels."""
    parts = list(iter_shard_arrays(path, classes))
    layout, options = layout_of(path)
    if not parts:
        raise DatasetError(f"{path} holds no shards")
    total = sum(len(p) for p in parts)
    shape = next((p.images.shape[1:] for p in parts if len(p)), (0, 0))
    images = np.empty((total, *shape), dtype=np.uint8)
    pos = 0
    for p in parts:
        images[pos:pos + len(p)] = p.images
        pos += len(p)
    return FaceArrays(
        images=images,
        labels=np.concatenate([p.labels for p in parts]),
        classes=parts[0].classes,
        subjects=np.concatenate([p.subjects for p in parts]),
        sources=np.concatenate([p.sources for p in parts]),
        keys=[k for p in parts for k in p.keys],
        meta={"root": str(path), "format": layout.fmt, "synth": options.get("options", {})},
    )


def is_synth_dataset(path: str | Path) -> bool:
    """True when `path` is a directory made by `fertk synth`."""
    return (Path(path) / META_DIR / OPTIONS_FILE).is_file()


# -- verification ------------------------------------------------------------------------------

@dataclass
class VerifyReport:
    """Outcome of `verify_dataset`: shards and faces checked, and every problem found."""

    root: str
    format: str
    shards: int
    faces: int
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)   # facts that are not problems (e.g. unchecked old shards)

    @property
    def ok(self) -> bool:
        """No problems."""
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict."""
        return {"root": self.root, "format": self.format, "shards": self.shards, "faces": self.faces,
                "ok": self.ok, "problems": list(self.problems), "notes": list(self.notes)}


def describe_execution(execution: dict[str, Any]) -> str:
    """'backend torch, compile on, device cpu, batch 128' (batch only where it changes bytes)."""
    parts = [f"backend {execution.get('backend')}"
             + (f" ({execution['provider']})" if execution.get("provider") else ""),
             f"compile {'on' if execution.get('compile') else 'off'}", f"device {execution.get('device')}"]
    if execution.get("batch") is not None:
        parts.append(f"batch {execution['batch']}")
    return ", ".join(parts)


def _execution_problems(options: dict[str, Any], records: dict[int, dict[str, Any]]) -> tuple[list[str], list[str]]:
    """Shards made under byte-affecting execution choices other than the dataset's (or each other's)."""
    expected = options.get("execution")
    recorded = {s: r["execution"] for s, r in records.items() if "execution" in r}
    problems, notes = [], []
    if expected is None and recorded:
        expected = recorded[min(recorded)]  # options.json predates the record: shards must agree among themselves
    for s, execution in sorted(recorded.items()):
        if execution != expected:
            problems.append(f"{shard_name(s)}: made with {describe_execution(execution)}, the dataset with "
                            f"{describe_execution(expected)} (shards made both ways differ in bytes; "
                            "`fertk synth ... --force` rebuilds)")
    legacy = len(records) - len(recorded)
    if legacy:
        notes.append(f"{legacy} shard(s) predate recorded execution choices (backend, compile, device): "
                     "whether they were made the same way cannot be checked")
    return problems, notes


def verify_dataset(path: str | Path, *, max_problems: int = 50) -> VerifyReport:
    """Check every shard's files against its record (size, sha256) and the manifest (keys, order)."""
    layout, options = layout_of(path)
    num_shards = int(options["num_shards"])
    emotions = tuple(options["plan"]["emotions"])
    n = int(options["plan"]["n"])
    shard_size = int(options["plan"]["shard_size"])
    report = VerifyReport(str(path), layout.fmt, num_shards, 0)
    fingerprint = options_fingerprint(options)
    problems = report.problems
    col = {name: i for i, name in enumerate(MANIFEST_COLUMNS)}
    merged_rows = 0
    records: dict[int, dict[str, Any]] = {}
    for s in range(num_shards):
        if len(problems) >= max_problems:
            problems.append("... (stopped after too many problems)")
            break
        record_path = layout.record_path(s)
        if not record_path.is_file():
            problems.append(f"{shard_name(s)}: unfinished (no record)")
            continue
        record = read_json(record_path)
        if "fingerprint" in record and record["fingerprint"] != fingerprint:
            problems.append(f"{shard_name(s)}: made with other options (fingerprint {record['fingerprint']})")
            continue
        records[s] = record
        for rel, info in record["files"].items():
            target = layout.root / rel
            if not target.is_file():
                problems.append(f"{shard_name(s)}: missing {rel}")
            elif target.stat().st_size != info["bytes"]:
                problems.append(f"{shard_name(s)}: {rel} has {target.stat().st_size} bytes, record says {info['bytes']}")
            elif sha256_file(target) != info["sha256"]:
                problems.append(f"{shard_name(s)}: {rel} sha256 mismatch")
        part = layout.manifest_part_path(s)
        if not part.is_file() or sha256_file(part) != record["manifest"]["sha256"]:
            problems.append(f"{shard_name(s)}: manifest part missing or altered")
            continue
        rows = _read_manifest_part(layout, s)
        start, stop = s * shard_size, min((s + 1) * shard_size, n)
        expected = [sample_key(i, e) for i in range(start, stop) for e in emotions]
        keys = [r[col["key"]] for r in rows]
        if keys != expected:
            problems.append(f"{shard_name(s)}: manifest keys differ from the plan "
                            f"({len(keys)} rows, {len(expected)} expected)")
            continue
        if [int(r[col["offset"]]) for r in rows] != list(range(len(rows))):
            problems.append(f"{shard_name(s)}: manifest offsets are not 0..{len(rows) - 1}")
        merged_rows += len(rows)
        report.faces += len(rows)
        problems.extend(_verify_contents(layout, s, rows, record, col))
    mixed, report.notes = _execution_problems(options, records)
    problems.extend(mixed)
    if layout.fmt == "folder" and not problems:
        problems.extend(_stray_images(layout, num_shards))
    if layout.manifest_path.is_file():
        with open(layout.manifest_path, "rb") as fh:
            lines = sum(1 for _ in fh) - 1
        if lines != n * len(emotions):
            problems.append(f"{MANIFEST_FILE} has {lines} rows, expected {n * len(emotions)}")
    else:
        problems.append(f"{MANIFEST_FILE} missing (the run has not finished)")
    return report


def _stray_images(layout: DatasetLayout, num_shards: int) -> list[str]:
    """Files in the ImageFolder tree that no shard record lists (leftovers of other options)."""
    recorded: set[str] = set()
    for s in range(num_shards):
        recorded.update(read_json(layout.record_path(s))["files"])
    stray = []
    images = layout.root / "images"
    for dirpath, _dirs, files in os.walk(images):
        for fname in files:
            rel = (Path(dirpath) / fname).relative_to(layout.root).as_posix()
            if rel not in recorded:
                stray.append(rel)
    return [f"{len(stray)} file(s) under images/ belong to no shard, e.g. {stray[0]}"] if stray else []


def _verify_contents(layout: DatasetLayout, shard: int, rows: list[list[str]], record: dict[str, Any],
                     col: dict[str, int]) -> list[str]:
    """Format-specific check that the shard holds exactly the manifest's samples, in order."""
    name = shard_name(shard)
    if layout.fmt == "wds":
        target = layout.root / layout.shard_file(shard)
        if not target.is_file():
            return []
        try:
            names = [m for m, _ in _iter_tar(target)]
        except (tarfile.TarError, OSError) as exc:
            return [f"{name}: unreadable tar ({exc})"]
        expected = [f"{r[col['key']]}.{ext}" for r in rows for ext in ("png", "cls", "json")]
        return [] if names == expected else [f"{name}: tar members differ from the manifest"]
    if layout.fmt == "npy":
        target = layout.root / layout.shard_file(shard)
        if not target.is_file():
            return []
        images = np.load(target, mmap_mode="r")
        labels = np.load(layout.root / layout.labels_file(shard))
        problems = []
        if images.shape[0] != len(rows):
            problems.append(f"{name}: {images.shape[0]} images, manifest lists {len(rows)}")
        if labels.tolist() != [int(r[col["label"]]) for r in rows]:
            problems.append(f"{name}: labels.npy differs from the manifest")
        return problems
    listed = {r[col["file"]] for r in rows}
    recorded = set(record["files"])
    return [] if listed == recorded else [f"{name}: manifest files differ from the record"]
