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
