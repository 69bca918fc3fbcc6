"""The writer stage: encode → append → commit, in its own thread, fed typed messages by a bounded queue.

The generating thread sends `OpenShard`, then `AddFaces` per batch, then `CommitShard`, and finally
`Stop`. PNG encoding goes through cv2, which releases the GIL (a pool of `workers` threads when
workers > 1), so the engine never waits on disk unless the queue is full. A failure is kept and
raised in the generating thread at its next `put` (or `finish`); the open shard is aborted, so
nothing half-written ever counts as done.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np

from fertk.core.errors import DatasetError, FertkError
from fertk.data.shards import DatasetLayout, ShardRows, ShardWriter, encode_png, open_shard_writer

QUEUE_BATCHES = 6  # batches in flight between generator and writer: bounds memory, absorbs jitter


@dataclass(frozen=True)
class OpenShard:
    """Start shard `index`, which will hold `faces` faces."""

    index: int
    faces: int


@dataclass(frozen=True)
class AddFaces:
    """Append a batch: faces uint8 [B, E, S, S] and their manifest rows."""

    faces: np.ndarray
    rows: ShardRows


@dataclass(frozen=True)
class CommitShard:
    """Finish the open shard: checksum, record (with `extra`) last, atomic rename."""

    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Stop:
    """No more work: the thread ends after what is queued."""


WriterMessage = Union[OpenShard, AddFaces, CommitShard, Stop]


class Writer(threading.Thread):
    """The writer thread; `on_commit(shard, faces)` runs (in this thread) after each committed shard."""

    def __init__(self, layout: DatasetLayout, image_shape: tuple[int, int], workers: int,
                 on_commit: Callable[[int, int], None]) -> None:
        super().__init__(name="fertk-synth-writer", daemon=True)
        self.layout = layout
        self.image_shape = image_shape
        self.queue: queue.Queue[WriterMessage] = queue.Queue(maxsize=QUEUE_BATCHES)
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="fertk-encode") if workers > 1 else None
        self.workers = workers
        self.on_commit = on_commit
        self.error: BaseException | None = None
        self.current: ShardWriter | None = None
        self.faces_added = 0
        self.cpu_seconds = 0.0

    def put(self, message: WriterMessage) -> None:
        """Hand a message over; raise the writer's error instead of waiting on a dead writer."""
        while True:
            if self.error is not None:
                raise self.error
            try:
                self.queue.put(message, timeout=0.2)
                return
            except queue.Full:
                continue

    def finish(self) -> None:
        """Send Stop, wait for the thread, raise its error if it had one."""
        self.put(Stop())
        while self.is_alive():
            self.join(timeout=0.2)
        if self.error is not None:
            raise self.error

    def abandon(self) -> None:
        """The producer failed: let a live writer end without waiting for more."""
        if self.is_alive():
            try:
                self.queue.put_nowait(Stop())
            except queue.Full:
                pass

    def _encode(self, images: np.ndarray) -> list[bytes]:
        if self.pool is None:
            return [encode_png(im) for im in images]
        chunks = np.array_split(np.arange(len(images)), self.workers)
        parts = self.pool.map(lambda idx: [encode_png(images[i]) for i in idx], chunks)
        return [png for part in parts for png in part]

    def _handle(self, message: WriterMessage) -> None:
        if isinstance(message, OpenShard):
            self.current = open_shard_writer(self.layout, message.index, message.faces, self.image_shape)
        elif isinstance(message, AddFaces):
            assert self.current is not None, "AddFaces before OpenShard"
            flat = message.faces.reshape(-1, *self.image_shape)
            pngs = self._encode(flat) if self.current.needs_png else None
            self.current.add(flat, message.rows, pngs)
            self.faces_added += len(flat)
        elif isinstance(message, CommitShard):
            assert self.current is not None, "CommitShard before OpenShard"
            result = self.current.commit(message.extra)
            self.current = None
            self.on_commit(result.shard, result.faces)
        else:
            raise TypeError(f"not a writer message: {message!r}")

    def run(self) -> None:
        """The thread's loop (until Stop or the first error)."""
        try:
            while not isinstance(message := self.queue.get(), Stop):
                self._handle(message)
        except BaseException as exc:  # noqa: BLE001 - handed to the generating thread
            self.error = exc if isinstance(exc, FertkError) else DatasetError(
                f"writer failed: {type(exc).__name__}: {exc}")
            if self.current is not None:
                self.current.abort()
            # Drain so a blocked producer wakes up and sees the error.
            while True:
                try:
                    self.queue.get_nowait()
                except queue.Empty:
                    break
        finally:
            self.cpu_seconds = time.thread_time()  # this thread's CPU: encode + write cost (workers=1)
            if self.pool is not None:
                self.pool.shutdown(wait=True)
