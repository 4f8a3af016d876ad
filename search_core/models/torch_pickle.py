"""Read PyTorch checkpoints into numpy arrays without importing torch.

``torch.save`` writes one of two layouts:

* the zip layout (torch >= 1.6): ``<prefix>/data.pkl`` holds the object tree and every tensor
  storage is a member ``<prefix>/data/<key>`` of raw little-endian bytes;
* the legacy layout: five pickles in a row (magic number, protocol version, system info, the
  object tree, the list of storage keys), then for each storage an int64 element count and its
  raw bytes.

In both, tensors are pickled as calls to ``torch._utils._rebuild_tensor_v2(storage, offset, size,
stride, ...)`` and storages as persistent ids naming a storage class (``torch.FloatStorage``...).
A restricted :class:`pickle.Unpickler` maps those names to numpy: every tensor becomes an owned,
C-contiguous :class:`numpy.ndarray` with the tensor's dtype, offset, shape and strides. Any other
global (which a malicious checkpoint could use to run code) is refused.

:func:`cached_arrays` adds a ``.npz`` cache next to the checkpoint so later loads skip the pickle.
"""
from __future__ import annotations

import collections
import logging
import os
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C

# storage class name -> numpy dtype of one element ("bfloat16" is widened to float32 on read)
_STORAGE_DTYPES: dict[str, str] = {
    "DoubleStorage": "<f8",
    "FloatStorage": "<f4",
    "HalfStorage": "<f2",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "<i8",
    "IntStorage": "<i4",
    "ShortStorage": "<i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "?",
    "UntypedStorage": "u1",
}

_CACHE_FORMAT = "torch_pickle/1"

log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """The file is not a checkpoint this reader understands (or it asks for a forbidden global)."""


class _StorageType:
    """Stand-in for a torch storage class such as ``torch.FloatStorage``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.dtype = _STORAGE_DTYPES[name]

    @property
    def itemsize(self) -> int:
        return 2 if self.dtype == "bfloat16" else np.dtype(self.dtype).itemsize


class _Storage:
    """A flat storage whose bytes may be attached after unpickling (legacy layout)."""

    def __init__(self, stype: _StorageType, numel: int | None) -> None:
        self.stype = stype
        self.numel = numel
        self.data: np.ndarray | None = None  # 1-D, dtype of the storage
        self.base: _Storage | None = None    # legacy storage views point at their root
        self.base_offset = 0

    def attach(self, raw: bytes) -> None:
        if self.stype.dtype == "bfloat16":
            bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
            self.data = bits.view(np.float32)
        else:
            self.data = np.frombuffer(raw, dtype=self.stype.dtype)

    def array(self) -> np.ndarray:
        if self.base is not None:
            root = self.base.array()
            return root[self.base_offset:self.base_offset + (self.numel or 0)]
        if self.data is None:
            raise CheckpointError("checkpoint refers to a storage whose bytes are missing")
        return self.data


class _TensorRef:
    """A tensor to build once its storage's bytes are known."""

    def __init__(self, storage: _Storage, offset: int, size: tuple, stride: tuple) -> None:
        self.storage, self.offset, self.size, self.stride = storage, int(offset), tuple(size), tuple(stride)

    def build(self) -> np.ndarray:
        flat = self.storage.array()
        if len(self.size) != len(self.stride):
            raise CheckpointError(f"tensor size {self.size} and stride {self.stride} differ in rank")
        if any(n == 0 for n in self.size):
            return np.zeros(self.size, dtype=flat.dtype)
        last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride))
        if self.offset < 0 or any(s < 0 for s in self.stride) or last >= len(flat):
            raise CheckpointError(f"tensor (offset {self.offset}, size {self.size}, stride "
                                  f"{self.stride}) reaches outside its storage of {len(flat)} elements")
        view = np.lib.stride_tricks.as_strided(
            flat[self.offset:], shape=self.size,
            strides=tuple(s * flat.itemsize for s in self.stride), writeable=False)
        return np.array(view, dtype=flat.dtype.newbyteorder("="), order="C", copy=True)


class _TensorClass:
    """Stand-in for ``torch.Tensor`` / ``torch.nn.Parameter`` in ``_rebuild_from_type_v2``."""


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored):
    if not isinstance(storage, _Storage):
        raise CheckpointError(f"tensor built from {type(storage).__name__}, expected a storage")
    return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_parameter(data, *_ignored):
    return data


def _rebuild_from_type_v2(func, new_type, args, state):
    if new_type is not _TensorClass:
        raise CheckpointError("checkpoint holds a tensor subclass this reader does not support")
    return func(*args)


def _numpy_scalar(dtype, data=None):
    if data is None:
        return np.zeros((), dtype=dtype)[()]
    if isinstance(data, str):  # pickled by Python 2
        data = data.encode("latin1")
    return np.frombuffer(data, dtype=dtype)[0]


def _codecs_encode(text, encoding="utf-8"):
    """Protocol-2 pickles store ``bytes`` as ``_codecs.encode(text, 'latin1')``."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1", "utf-8", "ascii"):
        raise CheckpointError(f"unexpected _codecs.encode({type(text).__name__}, {encoding!r})")
    return text.encode(encoding)


def _numpy_reconstruct(subtype, shape, dtype):
    if subtype is not np.ndarray:
        raise CheckpointError("checkpoint holds a numpy array subclass")
    return np.ndarray.__new__(np.ndarray, shape, dtype)


_ALLOWED: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor"): lambda storage, offset, size, stride: _rebuild_tensor(
        storage, offset, size, stride),
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch", "Tensor"): _TensorClass,
    ("torch.nn.parameter", "Parameter"): _TensorClass,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("_codecs", "encode"): _codecs_encode,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
    ("numpy", "dtype"): np.dtype,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
}
for _name in _STORAGE_DTYPES:
    _ALLOWED[("torch", _name)] = _StorageType(_name)
_ALLOWED[("torch.storage", "UntypedStorage")] = _StorageType("UntypedStorage")


class _Unpickler(pickle.Unpickler):
    """Unpickler that knows only tensors, storages, plain containers and numpy scalars."""

    def __init__(self, file: BinaryIO, storages: dict[str, _Storage], legacy: bool) -> None:
        super().__init__(file, encoding="utf-8")
        self._storages = storages
        self._legacy = legacy

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise CheckpointError(f"checkpoint needs {module}.{name}, which this reader does not "
                                  "allow (only tensors, storages and plain containers)") from None

    def persistent_load(self, pid: Any) -> Any:
        if not isinstance(pid, tuple) or not pid:
            raise CheckpointError(f"unexpected persistent id {pid!r}")
        kind = pid[0].decode("ascii") if isinstance(pid[0], bytes) else pid[0]
        if kind != "storage":
            raise CheckpointError(f"checkpoint holds a pickled {kind!r}, not only tensors")
        if self._legacy:
            stype, key, _location, numel, view = pid[1:6]
        else:
            stype, key, _location, numel = pid[1:5]
            view = None
        if not isinstance(stype, _StorageType):
            raise CheckpointError(f"storage of unknown type {stype!r}")
        key = str(key)
        if key not in self._storages:
            self._storages[key] = _Storage(stype, int(numel))
        root = self._storages[key]
        if view is None:
            return root
        view_key, offset, view_size = view
        view_key = str(view_key)
        if view_key not in self._storages:
            v = _Storage(stype, int(view_size))
            v.base, v.base_offset = root, int(offset)
            self._storages[view_key] = v
        return self._storages[view_key]


def _resolve(obj: Any) -> Any:
    """Replace every tensor reference in a tree of containers by its numpy array."""
    if isinstance(obj, _TensorRef):
        return obj.build()
    if isinstance(obj, collections.OrderedDict):
        return collections.OrderedDict((k, _resolve(v)) for k, v in obj.items())
    if isinstance(obj, dict):
        return {k: _resolve(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_resolve(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_resolve(v) for v in obj)
    return obj


def _load_zip(path: Path) -> Any:
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pkl = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
        if len(pkl) != 1:
            raise CheckpointError(f"{path} is a zip file but has no single <prefix>/data.pkl")
        prefix = pkl[0][: -len("data.pkl")]
        order = prefix + "byteorder"
        if order in names and zf.read(order).decode().strip() != "little":
            raise CheckpointError(f"{path} was saved big-endian, which this reader does not support")
        storages: dict[str, _Storage] = {}
        with zf.open(pkl[0]) as f:
            obj = _Unpickler(f, storages, legacy=False).load()
        for key, st in storages.items():
            member = f"{prefix}data/{key}"
            try:
                raw = zf.read(member)
            except KeyError:
                raise CheckpointError(f"{path} lacks the tensor data member {member}") from None
            need = (st.numel or 0) * st.stype.itemsize
            if len(raw) < need:
                raise CheckpointError(f"{member} has {len(raw)} bytes, expected at least {need}")
            st.attach(raw[:need] if need else raw)
    return _resolve(obj)


def _load_legacy(path: Path) -> Any:
    storages: dict[str, _Storage] = {}
    with open(path, "rb") as f:
        header = [_Unpickler(f, storages, legacy=True).load() for _ in range(3)]
        magic, _protocol, sys_info = header
        if magic != LEGACY_MAGIC:
            raise CheckpointError(f"{path} is neither a zip checkpoint nor a legacy torch checkpoint")
        if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
            raise CheckpointError(f"{path} was saved big-endian, which this reader does not support")
        obj = _Unpickler(f, storages, legacy=True).load()
        keys = _Unpickler(f, storages, legacy=True).load()
        for key in keys:
            st = storages.get(str(key))
            if st is None or st.base is not None:
                raise CheckpointError(f"{path}: storage key {key!r} was never referenced")
            (numel,) = struct.unpack("<q", f.read(8))
            nbytes = numel * st.stype.itemsize
            raw = f.read(nbytes)
            if len(raw) != nbytes:
                raise CheckpointError(f"{path} is truncated inside storage {key!r}")
            st.numel = numel
            st.attach(raw)
    return _resolve(obj)


def load(path: str | os.PathLike) -> Any:
    """Load a ``torch.save`` file as the same tree of dicts/lists/tuples with numpy arrays.

    Raises :class:`CheckpointError` for anything but plain containers, tensors and numpy scalars.
    """
    path = Path(path)
    if zipfile.is_zipfile(path):
        return _load_zip(path)
    try:
        return _load_legacy(path)
    except (pickle.UnpicklingError, EOFError, struct.error) as e:
        raise CheckpointError(f"{path} is not a readable torch checkpoint: {e}") from None


def flatten_arrays(obj: Any, prefix: str = "") -> dict[str, np.ndarray]:
    """All arrays in a tree, keyed by their path joined with ``/`` (e.g. ``model_state/lstm.bias``)."""
    out: dict[str, np.ndarray] = {}
    if isinstance(obj, np.ndarray):
        out[prefix] = obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            out.update(flatten_arrays(v, f"{prefix}/{k}" if prefix else str(k)))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            out.update(flatten_arrays(v, f"{prefix}/{i}" if prefix else str(i)))
    return out


def cache_path(path: str | os.PathLike) -> Path:
    """Where :func:`cached_arrays` keeps the converted arrays of ``path``."""
    path = Path(path)
    return path.with_name(path.name + ".npz")


def cached_arrays(path: str | os.PathLike, prefix: str = "") -> dict[str, np.ndarray]:
    """Arrays of checkpoint ``path`` under ``prefix`` (stripped from the keys), via a .npz cache.

    The cache ``<checkpoint>.npz`` records the checkpoint's size and the prefix; it is rebuilt
    when either differs. If the checkpoint is gone but a matching cache exists, the cache is used.
    """
    path = Path(path)
    cache = cache_path(path)
    src_size = path.stat().st_size if path.is_file() else -1
    if cache.is_file():
        try:
            with np.load(cache, allow_pickle=False) as z:
                meta = str(z["__meta__"])
                if meta == f"{_CACHE_FORMAT}|{src_size}|{prefix}" or (
                        src_size < 0 and meta.startswith(_CACHE_FORMAT) and meta.endswith(f"|{prefix}")):
                    return {k: z[k] for k in z.files if k != "__meta__"}
        except (OSError, ValueError, KeyError):
            pass  # unreadable or stale cache: rebuild below
    if src_size < 0:
        raise FileNotFoundError(f"checkpoint {path} not found")
    arrays = {k[len(prefix):]: v for k, v in flatten_arrays(load(path)).items() if k.startswith(prefix)}
    if not arrays:
        raise CheckpointError(f"{path} has no arrays under {prefix!r}")
    part = cache.with_name(cache.name + ".part.npz")
    try:
        np.savez(part, __meta__=np.array(f"{_CACHE_FORMAT}|{src_size}|{prefix}"), **arrays)
        os.replace(part, cache)
    except OSError as e:  # a read-only weights folder still works, just without the cache
        log.warning("could not write the weights cache %s: %s", cache, e)
        part.unlink(missing_ok=True)
    return arrays
