"""One msrun worker for tests/test_train_dist.py: one data-parallel update per step graph on this
rank's sample (dp_step_worker), then a run via train.loop.train; dumps the weights of both and the
digests of the label batches the run trained on; then runs `cli.py eval` on the run's checkpoint;
then a run that SIGTERM reaches on rank 1 only, and where each rank stopped."""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from settings.files import load_config  # noqa: E402
from train.loop import train  # noqa: E402


def main(config: str, data: str, run: str, dump: str) -> None:
    from dp_step_worker import main as dp_updates

    dp_updates(dump)
    result = train(load_config(config), data, run, record_batches=True)
    arrays = {f"w.{p.name}": p.asnumpy() for p in result.net.get_parameters()}
    np.savez(Path(dump) / f"rank{result.rank}.npz", group_size=result.group_size,
             digests=np.array(result.batch_digests), losses=np.array([l for _, l in result.losses]), **arrays)
    # `eval` under msrun, through the command itself, of the run's last checkpoint.
    import cli

    cli.main(["eval", "--checkpoint", str(Path(run) / "checkpoints" / "step_0000003.ckpt"), "--data", data,
              "--json", str(Path(dump) / "dist_eval.json")], standalone_mode=False)

    def signal_rank_1(line):  # the run's first line: from there on a signal is a stop request
        if line.startswith("rank 1/2:"):
            os.kill(os.getpid(), signal.SIGTERM)

    stopped = train(load_config(config), data, f"{run}_stopped", log=signal_rank_1)
    np.savez(Path(dump) / f"stopped{stopped.rank}.npz", stopped_by=stopped.stopped_by or 0, at_step=stopped.at_step)


if __name__ == "__main__":
    main(*sys.argv[1:5])
