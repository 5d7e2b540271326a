"""One msrun worker for tests/test_train_dist.py: trains via train.loop.train, then dumps
this rank's final weights and the digests of the label batches it trained on."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from settings.files import load_config  # noqa: E402
from train.loop import train  # noqa: E402


def main(config: str, data: str, run: str, dump: str) -> None:
    result = train(load_config(config), data, run, record_batches=True)
    arrays = {f"w.{p.name}": p.asnumpy() for p in result.net.get_parameters()}
    np.savez(Path(dump) / f"rank{result.rank}.npz", group_size=result.group_size,
             digests=np.array(result.batch_digests), losses=np.array([l for _, l in result.losses]), **arrays)


if __name__ == "__main__":
    main(*sys.argv[1:5])
