"""Device names and CPU thread counts: one reading of ``--device`` for every command."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from fertk.core.errors import DeviceUnavailableError, InvalidInputError

DEVICE_HINT = "use cpu, cuda, cuda:N or auto"


def resolve_device(name: str | None, *, local_rank: int = 0, world_size: int = 1) -> str:
    """'auto' → 'cuda' when torch sees a GPU, else 'cpu'; 'cuda' under torchrun (world_size > 1)
    → this rank's own GPU ('cuda:<local_rank mod GPUs>'); 'cuda:N' checked against the GPUs
    present. Returns the device as a string torch accepts; a device that is not here is a
    DeviceUnavailableError, a name that is no device an InvalidInputError."""
    import torch

    text = str(name or "cpu").strip().lower()
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    if text == "cpu":
        return "cpu"
    if text != "cuda" and not text.startswith("cuda:"):
        raise InvalidInputError(f"unknown device {name!r}", hint=DEVICE_HINT)
    if not torch.cuda.is_available():
        raise DeviceUnavailableError(
            f"device {name!r} requested but torch sees no CUDA device (torch {torch.__version__})",
            hint="use --device cpu, or a CUDA build of torch on a machine with a GPU")
    count = torch.cuda.device_count()
    if text == "cuda":
        return f"cuda:{local_rank % count}" if world_size > 1 else "cuda"
    index_text = text.split(":", 1)[1]
    if not index_text.isdigit():
        raise InvalidInputError(f"unknown device {name!r}", hint=DEVICE_HINT)
    if int(index_text) >= count:
        raise DeviceUnavailableError(f"device {name!r} requested, but only {count} CUDA device(s) are visible")
    return f"cuda:{int(index_text)}"


def is_cuda(device: str | None) -> bool:
    """Whether a device string names a CUDA device."""
    return str(device or "cpu").startswith("cuda")


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run a block with torch's intra-op thread count set to `threads` (None or 0 leaves it alone)."""
    import torch

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tile units (bf16 matrix multiply), as torch's CPU dispatch sees them.

    On such CPUs oneDNN runs bf16 convolutions 2.6-3x faster than fp32 (StarGAN, benchmarks/official);
    AVX512-BF16 alone (e.g. Zen 4/5) is not measured, and AVX2 CPUs emulate bf16 (slower than fp32).
    """
    import torch

    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)  # private but stable since torch 2.1
    try:
        return bool(probe()) if callable(probe) else False
    except Exception:  # noqa: BLE001 - an unreadable CPU is treated as one without AMX
        return False
