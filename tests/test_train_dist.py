"""Data parallel through MindSpore's own launcher: 2 CPU workers (msrun, mccl)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from test_train_run import tiny_data, write_tiny_config  # noqa: F401  (session fixture)

ROOT = Path(__file__).resolve().parents[1]


def test_two_msrun_workers_share_the_batch_and_end_identical(tiny_data, tmp_path):  # noqa: F811
    bin_dir = Path(sys.executable).parent
    msrun = bin_dir / "msrun"
    if not msrun.exists():
        pytest.skip("msrun is not installed beside the interpreter")
    cfg = write_tiny_config(tmp_path / "tiny.yaml", train={"iterations": 3, "batch_size": 2, "eval_every": 0,
                                                           "checkpoint_every": 3, "log_every": 1})
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", PYTHONFAULTHANDLER="1")
    # MindSpore 2.10's CPU collectives have crashed a worker with SIGSEGV once on a heavily loaded
    # machine (not reproducible alone); a second launch tells such a crash from a real failure, which
    # fails both times. The first attempt's logs are kept in the assertion message.
    first = ""
    for attempt in range(2):
        work = tmp_path / f"attempt{attempt}"
        dump = work / "dump"
        dump.mkdir(parents=True)
        port = 20000 + (os.getpid() + 7919 * attempt) % 20000
        proc = subprocess.run([str(msrun), "--worker_num=2", "--local_worker_num=2", f"--master_port={port}",
                               "--join=True", f"--log_dir={work / 'logs'}",
                               str(ROOT / "tests" / "train_dist_worker.py"), str(cfg), str(tiny_data),
                               str(work / "run"), str(dump)],
                              cwd=work, env=env, capture_output=True, text=True, timeout=600)
        logs = "\n".join(p.read_text(errors="replace")[-3000:] for p in sorted((work / "logs").glob("*.log")))
        if proc.returncode == 0 or "Error code: -11" not in proc.stdout + proc.stderr + logs:
            break
        first = "first attempt crashed (SIGSEGV):\n" + logs[-3000:]
    assert proc.returncode == 0, first + proc.stdout[-2000:] + proc.stderr[-2000:] + logs
    ranks = [np.load(dump / f"rank{r}.npz") for r in (0, 1)]
    assert all(int(r["group_size"]) == 2 for r in ranks)
    # Gradients are averaged across ranks, so both replicas take identical steps.
    names = [k for k in ranks[0].files if k.startswith("w.")]
    assert names
    for name in names:
        np.testing.assert_array_equal(ranks[0][name], ranks[1][name], err_msg=name)
    # The global batch is split: each rank trains on its own label batches, none shared.
    d0, d1 = list(ranks[0]["digests"]), list(ranks[1]["digests"])
    assert len(d0) == len(d1) == 3
    assert not set(d0) & set(d1)
    # Only rank 0 writes into RUN.
    assert sorted(p.name for p in (work / "run" / "checkpoints").iterdir()) == ["step_0000003.ckpt",
                                                                                    "step_0000003.yaml"]
