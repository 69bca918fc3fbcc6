"""A record's pixels: image files of any common format (PNG checked before libpng sees it),
video frames, or inline arrays; OpenCV kept quiet (fertk counts and reports unreadable images)."""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import numpy as np

from fertk.core.errors import DatasetError
from fertk.data.records import VIDEO_SUFFIXES, FaceRecord

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Ancillary chunks dropped before libpng sees them: OpenCV ignores colour profiles, and a damaged
# one makes libpng print "libpng warning: iCCP: ..." straight to the process's stderr.
_PNG_DROPPED = {b"iCCP"}


def clean_png(data: np.ndarray, path: str | Path) -> np.ndarray:
    """PNG bytes libpng decodes without printing: ancillary chunks that fail their CRC (or that
    OpenCV ignores, see `_PNG_DROPPED`) are dropped; a truncated file or a critical chunk with a
    bad CRC is a DatasetError naming the file. Anything not a PNG is returned unchanged.

    libpng reports such damage on file descriptor 2 itself, where neither OpenCV's log level nor
    Python can catch it, so fertk checks the chunks before decoding.
    """
    view = memoryview(data).cast("B")
    if bytes(view[:8]) != _PNG_SIGNATURE:
        return data
    keep: list[memoryview] = [view[:8]]
    dropped = False
    pos, end = 8, len(view)
    while True:
        if pos == end:  # no IEND, but whole chunks: libpng decides
            break
        if pos + 12 > end:
            raise DatasetError(f"{path}: not a decodable image (truncated PNG: the file ends inside a chunk header "
                               f"at byte {end})")
        length = int.from_bytes(view[pos:pos + 4], "big")
        kind = bytes(view[pos + 4:pos + 8])
        stop = pos + 12 + length
        if stop > end:
            raise DatasetError(f"{path}: not a decodable image (truncated PNG: chunk {kind.decode('latin-1')!r} "
                               f"ends past the {end} bytes of the file)")
        body = view[pos + 4:stop - 4]
        crc_ok = zlib.crc32(body) == int.from_bytes(view[stop - 4:stop], "big")
        critical = kind[:1].isupper()
        if not crc_ok and critical:
            raise DatasetError(f"{path}: not a decodable image (corrupt PNG: chunk {kind.decode('latin-1')} "
                               "fails its CRC check)")
        if crc_ok and kind not in _PNG_DROPPED:
            keep.append(view[pos:stop])
        else:
            dropped = True
        pos = stop
        if kind == b"IEND":
            break
    if not dropped:
        return data
    return np.frombuffer(b"".join(keep), dtype=np.uint8)


_OPENCV_QUIET = False


def quiet_opencv() -> None:
    """Silence OpenCV's own log lines ("[ WARN:0@...] ...") for the image reads fertk does;
    unreadable images are counted and reported by fertk instead. An OPENCV_LOG_LEVEL the user
    set is left alone."""
    global _OPENCV_QUIET
    if _OPENCV_QUIET or os.environ.get("OPENCV_LOG_LEVEL"):
        return
    _OPENCV_QUIET = True
    # FFmpeg's own "[mov @ 0x...]" lines; OpenCV reads this when it first opens a video.
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    import cv2

    try:
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    except AttributeError:  # pragma: no cover - builds without the utils.logging binding
        cv2.setLogLevel(0)


def read_image(record: FaceRecord) -> np.ndarray:
    """A record's pixels as uint8 [H, W] (gray) or [H, W, 3] (RGB); DatasetError if unreadable."""
    import cv2

    if record.pixels is not None:
        pixels = np.asarray(record.pixels)
        if pixels.dtype != np.uint8 or pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[2] != 3):
            raise DatasetError(f"{record.key}: inline pixels must be uint8 HxW or HxWx3, got {pixels.dtype} {pixels.shape}")
        return pixels
    quiet_opencv()
    path = Path(record.path)  # type: ignore[arg-type]
    if path.suffix.lower() in VIDEO_SUFFIXES:
        return _read_video_frame(path, int(record.meta.get("frame", 0)))
    try:
        data = np.fromfile(path, dtype=np.uint8)  # imdecode also copes with non-ASCII paths
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read image ({exc.strerror or exc})") from None
    image = cv2.imdecode(clean_png(data, path), cv2.IMREAD_UNCHANGED) if data.size else None
    if image is None:
        raise DatasetError(f"{path}: not a decodable image ({data.size} bytes)")
    if image.dtype != np.uint8:  # 16-bit PNG/TIFF
        image = cv2.convertScaleAbs(image, alpha=255.0 / max(1, int(image.max())))
    if image.ndim == 3 and image.shape[2] == 2:  # gray + alpha
        image = np.ascontiguousarray(image[:, :, 0])
    elif image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    elif image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return image


def _read_video_frame(path: Path, frame: int) -> np.ndarray:
    import cv2

    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            raise DatasetError(f"{path}: cannot open video")
        # Grab forward instead of seeking: seeking is inexact for many codecs.
        for _ in range(frame):
            if not capture.grab():
                raise DatasetError(f"{path}: video ends before frame {frame}")
        ok, image = capture.read()
    finally:
        capture.release()
    if not ok or image is None:
        raise DatasetError(f"{path}: cannot decode frame {frame}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def video_frame_count(path: Path) -> int:
    """Frames in a video file (read through when the container does not store the count)."""
    import cv2

    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            raise DatasetError(f"{path}: cannot open video", hint="extract its frames to <session>/frames/*.png")
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        if count <= 0:  # some containers do not store the count: read through
            count = 0
            while capture.grab():
                count += 1
    finally:
        capture.release()
    if count <= 0:
        raise DatasetError(f"{path}: video has no frames")
    return count


__all__ = ["clean_png", "quiet_opencv", "read_image", "video_frame_count"]
