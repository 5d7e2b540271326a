"""Read a PyTorch zip checkpoint (`torch.save`) without PyTorch and without running code from it.

A `.pth` is a zip holding `<name>/data.pkl` (a pickle) and `<name>/data/<key>` (raw tensor
storages). The pickle is read with an Unpickler whose `find_class` allows only the few names a
tensor state dict needs; any other global (e.g. `os.system`) is refused when the pickle names it,
before anything could call it.
"""
from __future__ import annotations

import collections
import pickle
import zipfile
from pathlib import Path

import numpy as np


class TorchFileError(ValueError):
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


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    size, stride = tuple(size), tuple(stride)
    if any(s < 0 for s in size) or any(s < 0 for s in stride):
        raise pickle.UnpicklingError(f"negative size or stride {size} {stride}")
    if not size:
        last = storage_offset
    else:
        last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride)) if min(size) > 0 else -1
    if last >= storage.size:
        raise pickle.UnpicklingError(f"tensor of shape {size} reads past its storage ({storage.size} items)")
    if size and min(size) == 0:
        return np.zeros(size, storage.dtype)
    view = np.lib.stride_tricks.as_strided(storage[storage_offset:], shape=size,
                                           strides=[s * storage.itemsize for s in stride], writeable=False)
    return np.array(view)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    return data


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class _SafeUnpickler(pickle.Unpickler):
    def __init__(self, fh, archive: zipfile.ZipFile, prefix: str, path: Path):
        super().__init__(fh)
        self.archive = archive
        self.prefix = prefix
        self.path = path
        self.storages = {}

    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise pickle.UnpicklingError(f"refused to load global {module}.{name}: only tensor data is accepted")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r:.80}")
        _, stype, key, _location, numel = pid
        if key not in self.storages:
            try:
                raw = self.archive.read(f"{self.prefix}data/{key}")
            except KeyError:
                raise pickle.UnpicklingError(f"storage data/{key} is missing from the archive") from None
            if stype.dtype == "bfloat16":
                arr = (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
            else:
                arr = np.frombuffer(raw, np.dtype(stype.dtype).newbyteorder("<"))
            if arr.size < numel:
                raise pickle.UnpicklingError(f"storage data/{key} holds {arr.size} items, expected {numel}")
            self.storages[key] = arr
        return self.storages[key]


def load_torch_file(path) -> object:
    """The unpickled object of a torch zip checkpoint, tensors as numpy arrays."""
    path = Path(path)
    if not path.is_file():
        raise TorchFileError(f"{path}: file not found")
    try:
        with zipfile.ZipFile(path) as archive:
            pkl = [n for n in archive.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
            if len(pkl) != 1:
                raise TorchFileError(f"{path}: not a PyTorch zip checkpoint (no <name>/data.pkl)")
            prefix = pkl[0][: -len("data.pkl")]
            order = archive.read(prefix + "byteorder").decode() if prefix + "byteorder" in archive.namelist() \
                else "little"
            if order.strip() != "little":
                raise TorchFileError(f"{path}: big-endian checkpoints are not supported")
            with archive.open(pkl[0]) as fh:
                return _SafeUnpickler(fh, archive, prefix, path).load()
    except TorchFileError:
        raise
    except (zipfile.BadZipFile, EOFError, zipfile.LargeZipFile) as err:
        raise TorchFileError(f"{path}: truncated or not a PyTorch zip checkpoint ({err})") from None
    except pickle.UnpicklingError as err:
        raise TorchFileError(f"{path}: {err}") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError) as err:
        raise TorchFileError(f"{path}: corrupt checkpoint ({type(err).__name__}: {err})") from None
