"""Crafted weight files that ask for far more memory than they hold: rejected with a clear error,
peak RSS under 1 GB while rejecting (measured in a child process that imports only the readers)."""
from __future__ import annotations

import json
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import cli
from weights.torch_pickle import TorchFileError, _rebuild_tensor_v2, load_torch_file

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "fixtures" / "golden"
RSS_LIMIT_KB = 1 << 20  # 1 GB


def _pickle_ops(*parts: bytes) -> bytes:
    return b"\x80\x02" + b"".join(parts) + b"."


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _unicode(s: str) -> bytes:
    data = s.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def _tensor_pickle(numel: int, size: tuple, stride: tuple) -> bytes:
    """{'model': {'w': _rebuild_tensor_v2(storage(numel floats), 0, size, stride)}} as torch writes it."""
    def tup(values):
        return b"(" + b"".join(b"J" + struct.pack("<i", v) for v in values) + b"t"
    storage = (b"(" + _unicode("storage") + _global("torch", "FloatStorage") + _unicode("0") + _unicode("cpu")
               + b"J" + struct.pack("<i", numel) + b"tQ")
    tensor = _global("torch._utils", "_rebuild_tensor_v2") + b"(" + storage + b"J\x00\x00\x00\x00" + tup(size) \
        + tup(stride) + b"\x89}tR"
    return _pickle_ops(b"}" + _unicode("model") + b"}" + _unicode("w") + tensor + b"ss")


def _write_pth(path: Path, pkl: bytes, storages: dict, compress=zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(path, "w", compression=compress) as z:
        z.writestr("archive/data.pkl", pkl)
        z.writestr("archive/byteorder", "little")
        for key, data in storages.items():
            z.writestr(f"archive/data/{key}", data)
    return path


def _child_rss(kind: str, path: Path) -> dict:
    """Reject `path` in a fresh interpreter; its peak RSS and the error message."""
    code = f"""
import json, sys
sys.path.insert(0, {str(ROOT)!r})
try:
    if {kind!r} == "pth":
        from weights.torch_pickle import load_torch_file as load
    else:
        from weights.npz_reader import read_npz as load
    load({str(path)!r})
    error = None
except Exception as err:
    error = f"{{type(err).__name__}}: {{err}}"
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the forking (large) pytest process.
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({{"error": error, "rss_kb": hwm}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_zero_stride_view_over_a_tiny_storage(tmp_path):
    # 30000 x 30000 float32 (3.6 GB) repeated from one stored float: 600-odd bytes on disk.
    pth = _write_pth(tmp_path / "stride.pth", _tensor_pickle(1, (30000, 30000), (0, 0)), {"0": b"\0" * 4})
    assert pth.stat().st_size < 1000
    got = _child_rss("pth", pth)
    assert got["error"] and got["error"].startswith("TorchFileError") and "declares 900000000 items" in got["error"]
    assert got["rss_kb"] < RSS_LIMIT_KB


def test_zip_bomb_storage(tmp_path):
    # A 1.5 GB storage of zeros deflated to ~1.5 MB: the read stops at the file's inflate budget.
    numel = 3 << 27  # 402653184 floats = 1.5 GiB
    pth = tmp_path / "bomb.pth"
    with zipfile.ZipFile(pth, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        z.writestr("archive/data.pkl", _tensor_pickle(numel, (numel,), (1,)))
        with z.open("archive/data/0", "w") as fh:
            zeros = bytes(64 << 20)
            for _ in range(numel * 4 // len(zeros)):
                fh.write(zeros)
    assert pth.stat().st_size < 8 << 20
    got = _child_rss("pth", pth)
    assert got["error"] and "more than the file could hold" in got["error"]
    assert got["rss_kb"] < RSS_LIMIT_KB


def test_tensors_may_not_declare_more_than_stored(tmp_path):
    # Two tensors each viewing the whole (honest) storage: together twice the stored bytes.
    pkl = _tensor_pickle(4, (4,), (1,))
    twice = pkl.replace(b"ss.", b"") + _unicode("v") + pkl[pkl.index(b"c" + b"torch._utils"):pkl.index(b"ss.")] \
        + b"ss."
    # The second storage id is the same key, so it reuses the storage read once.
    pth = _write_pth(tmp_path / "twice.pth", twice, {"0": np.arange(4, dtype="<f4").tobytes()})
    with pytest.raises(TorchFileError, match="declare 32 bytes, more than the 16 bytes"):
        load_torch_file(pth)


def test_storage_shorter_or_longer_than_declared(tmp_path):
    pth = _write_pth(tmp_path / "short.pth", _tensor_pickle(8, (8,), (1,)), {"0": b"\0" * 16})
    with pytest.raises(TorchFileError, match="holds 16 bytes, expected 32"):
        load_torch_file(pth)
    pth = _write_pth(tmp_path / "long.pth", _tensor_pickle(2, (2,), (1,)), {"0": b"\0" * 16})
    with pytest.raises(TorchFileError, match="holds more bytes, expected 8"):
        load_torch_file(pth)


def test_build_on_an_allowed_function_is_refused(tmp_path):
    before = dict(_rebuild_tensor_v2.__dict__)
    pkl = _pickle_ops(_global("torch._utils", "_rebuild_tensor_v2") + b"}" + _unicode("__doc__") + _unicode("pwned")
                      + b"sb")
    pth = _write_pth(tmp_path / "build.pth", pkl, {})
    with pytest.raises(TorchFileError, match="refused BUILD on a function"):
        load_torch_file(pth)
    assert _rebuild_tensor_v2.__dict__ == before and _rebuild_tensor_v2.__doc__ != "pwned"


def test_setitem_into_a_tensor_is_refused(tmp_path):
    tensor_pkl = _tensor_pickle(2, (2,), (1,))
    body = tensor_pkl[tensor_pkl.index(b"c" + b"torch._utils"):tensor_pkl.index(b"ss.")]
    pkl = _pickle_ops(body + b"J\x00\x00\x00\x00J\x07\x00\x00\x00s")
    pth = _write_pth(tmp_path / "setitem.pth", pkl, {"0": b"\0" * 8})
    with pytest.raises(TorchFileError, match="refused SETITEM on a ndarray"):
        load_torch_file(pth)


def test_the_real_release_still_loads():
    state = load_torch_file(GOLDEN / "seg_golden_mask" / "checkpoint.pth")
    assert state["model"]["encoder.blocks.0.attn.qkv.weight"].shape == (192, 64)
    assert isinstance(state["model"], dict) and hasattr(state["model"], "_metadata")


def _npz_with_header(path: Path, shape: tuple, data: bytes) -> Path:
    header = f"{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}".encode()
    header += b" " * (63 - (len(header) + 10) % 64) + b"\n"
    npy = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + data
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("embedding/kernel.npy", npy)
    return path


def test_npz_header_declaring_a_huge_shape(tmp_path):
    npz = _npz_with_header(tmp_path / "huge.npz", (1000000, 1000000), b"\0" * 64)
    got = _child_rss("npz", npz)
    assert got["error"] and got["error"].startswith("NpzError") and "huge.npz" in got["error"]
    assert "more than the file could hold" in got["error"]
    assert got["rss_kb"] < RSS_LIMIT_KB
    result = CliRunner().invoke(cli.main, ["convert-weights", str(npz), "--out", str(tmp_path / "o.ckpt"),
                                           "--config", str(ROOT / "configs" / "seg_tiny_mask.yaml")])
    assert result.exit_code == 2 and "error:" in result.output and "huge.npz" in result.output, result.output
    assert not (tmp_path / "o.ckpt").exists()


def test_npz_data_shorter_than_its_header(tmp_path):
    npz = _npz_with_header(tmp_path / "short.npz", (4, 4), b"\0" * 12)
    from weights.npz_reader import NpzError, read_npz

    with pytest.raises(NpzError, match="holds 12 data bytes, its header declares 64"):
        read_npz(npz)


def test_truncated_npz_is_a_clear_error(tmp_path):
    data = (GOLDEN / "vit_golden_augreg.npz").read_bytes()
    bad = tmp_path / "cut.npz"
    bad.write_bytes(data[: len(data) // 2])
    result = CliRunner().invoke(cli.main, ["convert-weights", str(bad), "--out", str(tmp_path / "o.ckpt"),
                                           "--config", str(ROOT / "configs" / "seg_tiny_mask.yaml")])
    assert result.exit_code == 2, result.output
    assert "error:" in result.output and "cut.npz: not a readable .npz" in result.output
