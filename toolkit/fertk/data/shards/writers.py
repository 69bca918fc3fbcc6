"""Shard writers, one per format: faces stream to temporary files; `commit` renames them into
place, writes the shard's manifest part and, last, its record (the shard's done-marker)."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fertk.core.errors import DatasetError
from fertk.core.io import HashingWriter, sha256_bytes, temp_path_for
from fertk.data.shards.layout import DatasetLayout, write_bytes_atomic, write_error, write_json_atomic
from fertk.data.shards.manifest import ShardRows, manifest_lines
from fertk.data.shards.png import encode_png

_TAR_RECORD = 10240  # GNU tar's default record size; archives are padded to a multiple of it


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
            raise write_error(getattr(exc, "filename", None) or self.target, exc) from None
        self.manifest_lines.extend(manifest_lines(rows, self.shard, self.written, files))
        self.written += len(images)

    def commit(self, record_extra: dict[str, Any] | None = None) -> ShardResult:
        """Finish the shard: rename data files into place, then manifest part, then the record."""
        if self.written != self.faces:
            raise DatasetError(f"shard {self.shard}: {self.written} faces written, {self.faces} planned")
        try:
            self._commit_impl()
        except OSError as exc:
            raise write_error(getattr(exc, "filename", None) or self.target, exc) from None
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


class _StreamedShardWriter(ShardWriter):
    """A shard whose main file streams through a hashing temporary file beside it."""

    def __init__(self, layout: DatasetLayout, shard: int, faces: int, image_shape: tuple[int, int]) -> None:
        super().__init__(layout, shard, faces, image_shape)
        self.rel = layout.shard_file(shard)
        self.final = self.target = layout.root / self.rel
        self.tmp = temp_path_for(self.final)
        try:
            self.final.parent.mkdir(parents=True, exist_ok=True)
            self.out = HashingWriter(self.tmp)
        except OSError as exc:
            raise write_error(self.tmp, exc) from None

    def _finish_stream(self) -> None:
        """Close, rename into place and record the main file."""
        self.out.close()
        os.replace(self.tmp, self.final)
        self.result.files[self.rel] = {"bytes": self.out.size, "sha256": self.out.sha.hexdigest()}

    def _abort_impl(self) -> None:
        self.out.discard()


class WdsShardWriter(_StreamedShardWriter):
    """WebDataset tar: per face <key>.png, <key>.cls (label index) and <key>.json (metadata)."""

    needs_png = True

    @staticmethod
    def _member(chunks: list[bytes], name: str, data: bytes) -> None:
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
        self._finish_stream()


class NpyShardWriter(_StreamedShardWriter):
    """Raw uint8 [F, H, W] .npy written as a stream (header first), plus int64 labels .npy."""

    def __init__(self, layout: DatasetLayout, shard: int, faces: int, image_shape: tuple[int, int]) -> None:
        super().__init__(layout, shard, faces, image_shape)
        self.labels_rel = layout.labels_file(shard)
        self.labels: list[np.ndarray] = []
        try:
            header = {"descr": "|u1", "fortran_order": False, "shape": (faces, *image_shape)}
            np.lib.format.write_array_header_1_0(self.out, header)
        except OSError as exc:
            self.out.discard()
            raise write_error(self.tmp, exc) from None

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
        self._finish_stream()
        self.result.files[self.labels_rel] = {"bytes": len(labels), "sha256": sha256_bytes(labels)}


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
            # A pid-free temp name (one writer owns a shard's files): `remove_shard` removes a
            # killed writer's leftover by name, without listing folders of many thousand images.
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
