"""Read NVlabs network pickles (`network-snapshot-*.pkl`) as data, without running the code in them.

An NVlabs snapshot is a pickle of a dict ('G', 'D', 'G_ema', 'augment_pipe',
'training_set_kwargs'). Each network is stored as a call of
`torch_utils.persistence._reconstruct_persistent_obj(meta)`, where `meta` carries the source text
of the module that defined the class ('module_src') and the module's `__dict__` ('state'). The
upstream loader compiles and runs that source: loading such a file with `pickle.load` runs
whatever code it contains. This reader uses a restricted unpickler instead. It resolves only the
globals an NVlabs snapshot names, maps the reconstruct function to one that returns `meta`
untouched (the embedded source is never compiled), reads every tensor storage through
`torch.load(..., weights_only=True)`, and refuses any other global with `UnsafeFileError`.
Parameters and buffers are collected from the `state` dicts (`_parameters`, `_buffers`,
`_modules`, recursively) under their dotted state-dict names; `_init_kwargs` gives the config.

Supported:
* PyTorch snapshots of NVlabs stylegan2-ada-pytorch (`training.networks.Generator`), including
  the official pretrained pickles converted from TensorFlow by its legacy.py, made with any
  pickle protocol >= 2 (protocol 2/3 files spell sets as `builtins.set`, which is allowed);
* StyleGAN2 generators pickled by the NVlabs stylegan3 repository
  (`training.networks_stylegan2.Generator`, synthesis options given as top-level kwargs).

Not supported (refused with a one-line message):
* TensorFlow-era StyleGAN / StyleGAN2 pickles (`dnnlib.tflib.*`): convert them first with the
  upstream legacy.py in an environment you trust, then save a state dict;
* StyleGAN3 generators (`networks_stylegan3`, alias-free synthesis with `SynthesisInput`);
* anything else whose pickle names another global.
"""

from __future__ import annotations

import io
import pickle
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fertk.core.errors import CheckpointError, UnsafeFileError
from fertk.models.weights import first_line

SUPPORTED = ("NVlabs stylegan2-ada-pytorch network pickles (StyleGAN2 Generator), "
             "StyleGAN2 generators from the NVlabs stylegan3 repository, or a state dict + config JSON")
NETWORK_PREFERENCE = ("G_ema", "G")
_MAX_DEPTH = 64


class KwargsDict(dict):
    """Stands in for `dnnlib.util.EasyDict`: a plain dict (no attribute access, no state)."""

    def __setstate__(self, state: Any) -> None:
        raise UnsafeFileError("pickle tried to set attributes on a kwargs dict; NVlabs snapshots never do")


class _GuardedCallable:
    """A callable handed to the unpickler that it may call but never modify (BUILD is refused)."""

    __slots__ = ("_function", "_label")

    def __init__(self, function: Callable[..., Any], label: str) -> None:
        self._function = function
        self._label = label

    def __call__(self, *args: Any) -> Any:
        return self._function(*args)

    def __setstate__(self, state: Any) -> None:
        raise UnsafeFileError(f"pickle tried to modify the reader's stand-in for {self._label}")

    def __repr__(self) -> str:
        return f"<restricted {self._label}>"


def _reconstruct_persistent_obj(meta: Any) -> Any:
    # The upstream function compiles meta['module_src']; here the meta dict itself is the result.
    return meta


def _load_storage_from_bytes(data: Any) -> Any:
    if not isinstance(data, (bytes, bytearray)):
        raise UnsafeFileError(f"tensor storage record holds {type(data).__name__}, expected bytes")
    try:
        storage = torch.load(io.BytesIO(bytes(data)), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafeFileError(f"a nested tensor storage needs code execution to load ({first_line(exc)})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"corrupt tensor storage inside the pickle ({first_line(exc)})") from None
    if not isinstance(storage, (torch.TypedStorage, torch.UntypedStorage)):
        raise UnsafeFileError(f"a nested storage record holds {type(storage).__name__}, not a tensor storage")
    return storage


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any, *_ignored: Any) -> torch.Tensor:
    # requires_grad, backward hooks and tensor metadata do not matter for weights: dropped.
    if not isinstance(storage, torch.TypedStorage):
        raise UnsafeFileError(f"tensor record names a {type(storage).__name__} as its storage")
    if not (isinstance(storage_offset, int) and _int_tuple(size) and _int_tuple(stride)) or len(size) != len(stride):
        raise UnsafeFileError("tensor record with a non-integer offset, size or stride")
    if storage_offset < 0 or min((*size, *stride), default=0) < 0:
        raise UnsafeFileError("tensor record with a negative offset, size or stride")
    # torch would silently grow a too-small storage with uninitialised memory: check the extent.
    extent = 0 if 0 in size else storage_offset + 1 + sum((n - 1) * s for n, s in zip(size, stride))
    available = storage._size()
    if extent > available:
        raise CheckpointError(f"tensor record of shape {list(size)} needs {extent} elements, but its storage "
                              f"holds {available}")
    try:
        return torch._utils._rebuild_tensor_v2(storage, storage_offset, tuple(size), tuple(stride), False,
                                               OrderedDict())
    except RuntimeError as exc:
        raise CheckpointError(f"tensor record does not fit its storage ({first_line(exc)})") from None


def _rebuild_parameter(data: Any, *_ignored: Any) -> torch.Tensor:
    if not isinstance(data, torch.Tensor):
        raise UnsafeFileError(f"parameter record wraps a {type(data).__name__}, not a tensor")
    return data


def _numpy_dtype(*args: Any) -> np.dtype:
    if not args or not isinstance(args[0], str):
        raise UnsafeFileError("numpy dtype record without a type name")
    dtype = np.dtype(*args)
    if dtype.hasobject:
        raise UnsafeFileError("numpy dtype record of Python objects")
    return dtype


def _numpy_scalar(dtype: Any, data: Any = None) -> Any:
    if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, (bytes, bytearray)):
        raise UnsafeFileError("numpy scalar record that is not a plain number")
    return np.frombuffer(bytes(data), dtype=dtype, count=1)[0].item()


# (module, name) -> what the restricted unpickler returns for that global.
_ALLOWED: dict[tuple[str, str], Any] = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"):
        _GuardedCallable(_reconstruct_persistent_obj, "torch_utils.persistence._reconstruct_persistent_obj"),
    ("collections", "OrderedDict"): _GuardedCallable(OrderedDict, "collections.OrderedDict"),
    ("dnnlib.util", "EasyDict"): KwargsDict,
    ("torch._utils", "_rebuild_tensor_v2"): _GuardedCallable(_rebuild_tensor, "torch._utils._rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"): _GuardedCallable(_rebuild_parameter, "torch._utils._rebuild_parameter"),
    ("torch.storage", "_load_from_bytes"): _GuardedCallable(_load_storage_from_bytes, "torch.storage._load_from_bytes"),
    # Protocol 2/3 pickles (Python 3.7, which NVlabs recommended) spell sets as a global call.
    ("builtins", "set"): _GuardedCallable(set, "builtins.set"),
    ("builtins", "frozenset"): _GuardedCallable(frozenset, "builtins.frozenset"),
}
for _module in ("numpy", "numpy.core.multiarray", "numpy._core.multiarray"):
    _ALLOWED[(_module, "dtype")] = _GuardedCallable(_numpy_dtype, f"{_module}.dtype")
for _module in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _ALLOWED[(_module, "scalar")] = _GuardedCallable(_numpy_scalar, f"{_module}.scalar")
ALLOWED_GLOBALS = frozenset(_ALLOWED)


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only `ALLOWED_GLOBALS` (to inert stand-ins) and refuses the rest."""

    def __init__(self, file: Any, *, source: str) -> None:
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        """The stand-in for an allowed global; CheckpointError/UnsafeFileError for anything else."""
        if module.startswith("dnnlib.tflib"):
            raise CheckpointError(
                f"{self.source} is a TensorFlow-era StyleGAN/StyleGAN2 pickle ({module}.{name}), which fertk does "
                f"not read; supported: {SUPPORTED}",
                hint="convert it with NVlabs stylegan2-ada-pytorch legacy.py in an environment you trust, "
                     "then save G_ema's state dict")
        if module.startswith("training.networks_stylegan3"):
            raise CheckpointError(f"{self.source} holds a StyleGAN3 network ({module}.{name}); supported: {SUPPORTED}")
        allowed = _ALLOWED.get((module, name))
        if allowed is None:
            raise UnsafeFileError(
                f"refusing {self.source}: its pickle names the global {module}.{name}, which an NVlabs "
                f"snapshot never needs (loading it could run code)",
                hint=f"fertk reads {SUPPORTED}")
        return allowed

    def persistent_load(self, pid: Any) -> Any:
        """NVlabs snapshots carry no persistent ids; a file that does is not one."""
        raise UnsafeFileError(f"refusing {self.source}: its pickle uses persistent ids, which NVlabs snapshots do not")


def restricted_loads(data: bytes, *, source: str = "pickle") -> Any:
    """Unpickle `data` with `RestrictedUnpickler`; one-line errors with the byte offset on failure."""
    stream = io.BytesIO(data)
    try:
        return RestrictedUnpickler(stream, source=source).load()
    except CheckpointError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError,
            RecursionError, MemoryError, OverflowError, RuntimeError) as exc:
        raise CheckpointError(
            f"cannot read {source} ({len(data)} bytes): truncated or corrupt pickle, stopped near byte "
            f"{stream.tell()} ({type(exc).__name__}: {first_line(exc)})") from None


@dataclass
class NvlabsNetwork:
    """One network read from a snapshot: its tensors by state-dict name and its constructor kwargs."""

    network: str                                   # snapshot key, e.g. 'G_ema'
    class_name: str                                # e.g. 'Generator'
    init_kwargs: dict[str, Any]                    # constructor kwargs as plain JSON-able data
    state_dict: dict[str, torch.Tensor]            # dotted names -> tensors (params and buffers)
    snapshot_keys: list[str] = field(default_factory=list)


def read_nvlabs_pickle(path: str | Path, *, network: str | None = None) -> NvlabsNetwork:
    """Read a generator from an NVlabs snapshot: `network` or the first of 'G_ema', 'G'."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    data = path.read_bytes()
    if not data:
        raise CheckpointError(f"weights file is empty: {path}")
    snapshot = restricted_loads(data, source=str(path))
    if not isinstance(snapshot, Mapping):
        raise CheckpointError(f"{path} holds a pickled {type(snapshot).__name__}, not an NVlabs snapshot dict; "
                              f"supported: {SUPPORTED}")
    keys = [str(k) for k in snapshot]
    wanted = (network,) if network else NETWORK_PREFERENCE
    chosen = next((k for k in wanted if snapshot.get(k) is not None), None)
    if chosen is None:
        raise CheckpointError(f"{path} has no {' or '.join(repr(k) for k in wanted)} network "
                              f"(keys: {', '.join(keys) or 'none'})")
    meta = snapshot[chosen]
    _check_generator_meta(meta, path, chosen)
    state = meta["state"]
    return NvlabsNetwork(
        network=chosen,
        class_name=str(meta.get("class_name")),
        init_kwargs=_init_kwargs(state, path),
        state_dict=collect_state_dict(meta, source=f"{path} [{chosen}]"),
        snapshot_keys=keys,
    )


def _check_generator_meta(meta: Any, path: Path, key: str) -> None:
    if not (isinstance(meta, Mapping) and meta.get("type") == "class" and isinstance(meta.get("state"), Mapping)):
        raise CheckpointError(f"{path} [{key}] is not an NVlabs persistent network object; supported: {SUPPORTED}")
    src = meta.get("module_src")
    if isinstance(src, str) and ("class SynthesisInput" in src or "networks_stylegan3" in src):
        raise CheckpointError(f"{path} [{key}] is a StyleGAN3 (alias-free) generator, which fertk does not "
                              f"implement; supported: {SUPPORTED}")
    if meta.get("class_name") != "Generator":
        raise CheckpointError(f"{path} [{key}] is a {meta.get('class_name')!r}, not a StyleGAN2 Generator; "
                              f"supported: {SUPPORTED}")


def collect_state_dict(meta: Mapping[str, Any], *, source: str) -> dict[str, torch.Tensor]:
    """Parameters and buffers of a persistent-object tree, by dotted state-dict names."""
    out: dict[str, torch.Tensor] = {}
    _collect(meta, "", out, source, depth=0)
    return out


def _collect(meta: Any, prefix: str, out: dict[str, torch.Tensor], source: str, depth: int) -> None:
    where = prefix.rstrip(".") or "<root>"
    if depth > _MAX_DEPTH:
        raise CheckpointError(f"{source}: module tree deeper than {_MAX_DEPTH} levels at {where}")
    if not (isinstance(meta, Mapping) and isinstance(meta.get("state"), Mapping)):
        raise CheckpointError(f"{source}: submodule {where} is not an NVlabs persistent object")
    state = meta["state"]
    non_persistent = state.get("_non_persistent_buffers_set") or set()
    for group in ("_parameters", "_buffers"):
        entries = state.get(group) or {}
        if not isinstance(entries, Mapping):
            raise CheckpointError(f"{source}: {where}.{group} is a {type(entries).__name__}, not a dict")
        for name, value in entries.items():
            if value is None or (group == "_buffers" and name in non_persistent):
                continue
            if not isinstance(value, torch.Tensor):
                raise CheckpointError(f"{source}: {prefix}{name} is a {type(value).__name__}, not a tensor")
            out[f"{prefix}{name}"] = value
    modules = state.get("_modules") or {}
    if not isinstance(modules, Mapping):
        raise CheckpointError(f"{source}: {where}._modules is a {type(modules).__name__}, not a dict")
    for name, child in modules.items():
        if child is not None:
            _collect(child, f"{prefix}{name}.", out, source, depth + 1)


# Positional order of the upstream Generator constructor, for snapshots that stored _init_args.
_GENERATOR_ARGS = ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels", "mapping_kwargs",
                   "synthesis_kwargs")


def _init_kwargs(state: Mapping[str, Any], path: Path) -> dict[str, Any]:
    args = state.get("_init_args") or ()
    kwargs = state.get("_init_kwargs") or {}
    if not isinstance(kwargs, Mapping) or not isinstance(args, (tuple, list)) or len(args) > len(_GENERATOR_ARGS):
        raise CheckpointError(f"{path}: the generator's stored constructor arguments are malformed")
    merged = dict(zip(_GENERATOR_ARGS, args))
    merged.update(kwargs)
    return _plain(merged)


def _plain(value: Any) -> Any:
    """Kwargs as plain JSON-able data (dicts, lists, numbers, strings, None)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted(_plain(v) for v in value)
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def _int_tuple(value: Any) -> bool:
    return isinstance(value, (tuple, list)) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
