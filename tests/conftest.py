"""Shared fixtures: repository root on sys.path and the real Cityscapes frame, if present."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

REAL_SAMPLE = ROOT.parent / "shared" / "data" / "cityscapes_sample"


@pytest.fixture
def real_sample_root() -> Path:
    if not (REAL_SAMPLE / "leftImg8bit").is_dir():
        pytest.skip("the real Cityscapes frame (../shared/data/cityscapes_sample) is not on this machine")
    return REAL_SAMPLE



def _mount(*args: str) -> None:
    """Run `mount ARGS`, skipping the test where this machine does not allow it."""
    import subprocess

    done = subprocess.run(["mount", *args], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount here: mount {' '.join(args)}: {done.stderr.strip()}")


def _umount(paths) -> None:
    import subprocess

    for path in reversed(paths):
        # Lazy: a worker process (joblib keeps them) may still hold a file open there.
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture
def read_only():
    """`read_only(path)` bind-mounts `path` read-only onto itself until the test ends.

    Root ignores permission bits, so a read-only mount is the only honest unwritable folder."""
    mounted = []

    def make(path: Path) -> Path:
        path = Path(path)
        _mount("--bind", str(path), str(path))
        mounted.append(path)
        _mount("-o", "remount,bind,ro", str(path))
        return path

    yield make
    _umount(mounted)


@pytest.fixture
def small_disk(tmp_path):
    """`small_disk(kib)`: a fresh tmpfs of that size, a full disk on demand."""
    mounted = []

    def make(kib: int) -> Path:
        path = tmp_path / f"disk{len(mounted)}"
        path.mkdir()
        _mount("-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(path))
        mounted.append(path)
        return path

    yield make
    _umount(mounted)
