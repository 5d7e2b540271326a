"""Read a PyTorch zip checkpoint (`torch.save`) without PyTorch and without running code from it.

A `.pth` is a zip holding `<name>/data.pkl` (a pickle) and `<name>/data/<key>` (raw tensor
storages). The pickle is read with an Unpickler whose `find_class` allows only the few names a
tensor state dict needs; any other global (e.g. `os.system`) is refused when the pickle names it,
before anything could call it. The opcodes that mutate an object (BUILD, SETITEM(S), APPEND(S))
act only on the containers a state dict is made of (dicts, lists), never on the allowed
functions or on tensors.

Memory stays in proportion to the file: every zip member is read with a bound
(weights/bounded_zip.py), a storage must hold exactly the bytes its id declares, a tensor may not
view more elements than its storage holds past its offset (no zero strides that repeat one
value into gigabytes), and all tensors together may not declare more bytes than the storages hold.
The containers are bounded too, as each is built: a container counts one plus what each of its
items counts, an object referenced twice (pickle's memo) counted twice, so a few hundred bytes
nesting a tuple in itself cannot stand for billions of items to hash, compare or print; and a
container is never changed once it is inside another (state dicts are filled before they are
used), so a count once made stays true.
"""
from __future__ import annotations

import collections
import pickle
import zipfile
from pathlib import Path

import numpy as np

from base.errors import UserError
from base.messages import cut, short_repr
from weights.bounded_zip import BoundedZip, BoundExceeded

MAX_ITEMS = 1 << 20  # expanded items of any one container; a state dict holds a few thousand
MAX_DIMS = 32  # the most dimensions a numpy 1.x array can have


class TorchFileError(UserError, ValueError):
    """A .pth that cannot be read safely; the message names the file."""


_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": "bfloat16", "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class _StorageType:
    def __init__(self, name: str):
        self.name = name
        self.dtype = _STORAGE_DTYPES[name]


class _Storage:
    """A storage's items plus the running count of tensor bytes declared over all storages."""

    def __init__(self, array: np.ndarray, ledger: dict):
        self.array = array
        self.ledger = ledger


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError("tensor without a storage")
    if not isinstance(size, (tuple, list)) or not isinstance(stride, (tuple, list)):
        raise pickle.UnpicklingError(f"bad tensor geometry {short_repr(size)} {short_repr(stride)}")
    size, stride = tuple(size), tuple(stride)
    if not all(isinstance(v, int) and abs(v) < 1 << 63 for v in (storage_offset, *size, *stride)) \
            or len(size) != len(stride) or len(size) > MAX_DIMS:
        raise pickle.UnpicklingError(f"bad tensor geometry {short_repr(size)} {short_repr(stride)}")
    if storage_offset < 0 or any(s < 0 for s in size) or any(s < 0 for s in stride):
        raise pickle.UnpicklingError(f"negative size, stride or offset {short_repr(size)} {short_repr(stride)} {storage_offset}")
    items = storage.array
    numel = int(np.prod(size, dtype=object)) if size else 1
    if numel > max(items.size - storage_offset, 0) and numel > 0:
        raise pickle.UnpicklingError(f"tensor of shape {short_repr(size)} declares {numel} items over a storage holding "
                                     f"{items.size - storage_offset} past offset {storage_offset}")
    last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride)) if numel > 0 else -1
    if last >= items.size:
        raise pickle.UnpicklingError(f"tensor of shape {short_repr(size)} reads past its storage ({items.size} items)")
    ledger = storage.ledger
    ledger["declared"] += numel * items.itemsize
    if ledger["declared"] > ledger["stored"]:
        raise pickle.UnpicklingError(f"the tensors declare {ledger['declared']} bytes, more than the "
                                     f"{ledger['stored']} bytes their storages hold")
    if numel == 0:
        return np.zeros(size, items.dtype)
    view = np.lib.stride_tricks.as_strided(items[storage_offset:], shape=size,
                                           strides=[s * items.itemsize for s in stride], writeable=False)
    return np.array(view)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    return data


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


# Where each mutating opcode finds the object it changes (pickle._Unpickler's load_* methods).
_TARGET = {
    "BUILD": lambda u: u.stack[-2],                 # inst, state
    "SETITEM": lambda u: u.stack[-3],               # dict, key, value
    "APPEND": lambda u: u.stack[-2],                # list, value
    "SETITEMS": lambda u: u.metastack[-1][-1],      # dict, MARK, items...
    "APPENDS": lambda u: u.metastack[-1][-1],       # list, MARK, items...
    "ADDITEMS": lambda u: u.metastack[-1][-1],      # set, MARK, items...
}


# The items each mutating opcode adds to its target (BUILD sets attributes, which nothing counts).
_ADDED = {
    "BUILD": lambda u: (),
    "SETITEM": lambda u: u.stack[-2:],
    "APPEND": lambda u: u.stack[-1:],
    "SETITEMS": lambda u: u.stack,
    "APPENDS": lambda u: u.stack,
    "ADDITEMS": lambda u: u.stack,
}
_COUNTED = (tuple, list, dict, collections.OrderedDict, set, frozenset)


class _Sizes:
    """The expanded item count of every container the unpickler builds (see the module docstring)."""

    def __init__(self):
        self.sizes = {}  # id -> (container, count): the container is kept so its id stays unique
        self.inside = set()  # ids of containers held by another container

    def of(self, obj) -> int:
        return self.sizes[id(obj)][1] if id(obj) in self.sizes else 1

    def _record(self, obj, count: int, items) -> None:
        if count > MAX_ITEMS:
            raise pickle.UnpicklingError(f"a {type(obj).__name__} that expands to more than {MAX_ITEMS} items "
                                         "(shared references counted each time): not a tensor state dict")
        self.sizes[id(obj)] = (obj, count)
        self.inside.update(id(item) for item in items if type(item) in _COUNTED)

    def new(self, obj) -> None:
        """Count `obj` if it is a container not seen before (just built)."""
        if type(obj) in _COUNTED and id(obj) not in self.sizes:
            items = list(obj.keys()) + list(obj.values()) if isinstance(obj, dict) else list(obj)
            self._record(obj, 1 + sum(self.of(item) for item in items), items)

    def add(self, target, items) -> None:
        """Count `items` into `target`, which may not be inside another container yet."""
        if id(target) in self.inside or any(item is target for item in items):
            raise pickle.UnpicklingError(f"refused to fill a {type(target).__name__} already held by another "
                                         "container: not a tensor state dict")
        self._record(target, self.of(target) + sum(self.of(item) for item in items), items)


def _only_on(types, opcode: str, original):
    """A dispatch entry that runs `original` only if the object it mutates is one of `types`, and
    counts what it adds."""
    def handler(self):
        target = _TARGET[opcode](self)
        if type(target) not in types:
            raise pickle.UnpicklingError(f"refused {opcode} on a {type(target).__name__}: only dicts, lists and "
                                         "sets may be filled in a tensor state dict")
        self.sizes.add(target, list(_ADDED[opcode](self)))
        original(self)
    return handler


def _counting(original):
    """A dispatch entry that counts the container an opcode leaves on top of the stack, if new."""
    def handler(self):
        original(self)
        if self.stack:
            self.sizes.new(self.stack[-1])
    return handler


# The pure-Python unpickler: its opcode table can be restricted (the C one cannot).
_DISPATCH = {code: _counting(handler) for code, handler in pickle._Unpickler.dispatch.items()}
_CONTAINERS = {"BUILD": (collections.OrderedDict, dict), "SETITEM": (collections.OrderedDict, dict),
               "SETITEMS": (collections.OrderedDict, dict), "APPEND": (list,), "APPENDS": (list,), "ADDITEMS": (set,)}
for _name, _types in _CONTAINERS.items():
    _code = getattr(pickle, _name)[0]
    _DISPATCH[_code] = _only_on(_types, _name, pickle._Unpickler.dispatch[_code])


class _SafeUnpickler(pickle._Unpickler):
    dispatch = _DISPATCH

    def __init__(self, fh, archive: BoundedZip, prefix: str, path: Path):
        super().__init__(fh)
        self.archive = archive
        self.prefix = prefix
        self.path = path
        self.storages = {}
        self.ledger = {"declared": 0, "stored": 0}
        self.sizes = _Sizes()

    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise pickle.UnpicklingError(f"refused to load global {module}.{name}: only tensor data is accepted")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise pickle.UnpicklingError(f"unsupported persistent id {short_repr(pid)}")
        _, stype, key, _location, numel = pid
        if not isinstance(numel, int) or numel < 0 or not isinstance(key, str):
            raise pickle.UnpicklingError(f"bad storage id {short_repr(pid)}")
        if key not in self.storages:
            member = f"{self.prefix}data/{key}"
            if member not in self.archive.names():
                raise pickle.UnpicklingError(f"storage data/{key} is missing from the archive")
            itemsize = 2 if stype.dtype == "bfloat16" else np.dtype(stype.dtype).itemsize
            raw = self.archive.read_member(member, numel * itemsize)
            if stype.dtype == "bfloat16":
                arr = (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
            else:
                arr = np.frombuffer(raw, np.dtype(stype.dtype).newbyteorder("<"))
            self.ledger["stored"] += arr.nbytes
            self.storages[key] = _Storage(arr, self.ledger)
        return self.storages[key]


def load_torch_file(path) -> object:
    """The unpickled object of a torch zip checkpoint, tensors as numpy arrays."""
    path = Path(path)
    if not path.is_file():
        raise TorchFileError(f"{path}: file not found")
    try:
        with BoundedZip(path) as archive:
            pkl = [n for n in archive.names() if n.endswith("data.pkl") and n.count("/") == 1]
            if len(pkl) != 1:
                raise TorchFileError(f"{path}: not a PyTorch zip checkpoint (no <name>/data.pkl)")
            prefix = pkl[0][: -len("data.pkl")]
            order = "little"
            if prefix + "byteorder" in archive.names():
                with archive.open(prefix + "byteorder") as fh:
                    order = fh.read(16).decode(errors="replace")
            if order.strip() != "little":
                raise TorchFileError(f"{path}: big-endian checkpoints are not supported")
            with archive.open(pkl[0]) as fh:
                return _SafeUnpickler(fh, archive, prefix, path).load()
    except TorchFileError:
        raise
    except (zipfile.BadZipFile, EOFError, zipfile.LargeZipFile) as err:
        raise TorchFileError(f"{path}: truncated or not a PyTorch zip checkpoint ({cut(str(err))})") from None
    except (pickle.UnpicklingError, BoundExceeded) as err:
        raise TorchFileError(f"{path}: {cut(str(err))}") from None
    except MemoryError:
        raise TorchFileError(f"{path}: declares more data than fits in memory") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError) as err:
        raise TorchFileError(f"{path}: corrupt checkpoint ({type(err).__name__}: {cut(str(err))})") from None
