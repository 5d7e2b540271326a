"""What a model that learned nothing scores on a built split: the reference line for `make demo`.

    python -m evaluate.baseline --data OUT [--split val]

Prints the mIoU of (a) the best constant prediction (every pixel one class; the best of the 19
classes on this split's own labels, an upper bound for any constant predictor) and (b) uniform
random classes per pixel (seeded), both scored with the evaluation's own confusion matrix.
"""
from __future__ import annotations

import argparse

import numpy as np

from settings.schema import Config, with_eval_protocol
from evaluate.metrics import ConfusionMatrix, compute_metrics
from mindrecords.manifest import data_eval_protocol
from pipelines.eval_pipeline import eval_dataset
from base.labels import NUM_CLASSES


def baselines(data_root, split: str = "val", seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    constant = [ConfusionMatrix(NUM_CLASSES) for _ in range(NUM_CLASSES)]
    random = ConfusionMatrix(NUM_CLASSES)
    images = 0
    cfg = with_eval_protocol(Config(), data_eval_protocol(data_root, split), str(data_root))  # as eval reads it
    for row in eval_dataset(cfg, data_root, split).create_dict_iterator(num_epochs=1, output_numpy=True):
        label = row["label"]
        for cls, cm in enumerate(constant):
            cm.update(label, np.full_like(label, cls))
        random.update(label, rng.integers(0, NUM_CLASSES, size=label.shape).astype(np.uint8))
        images += 1
    scores = [compute_metrics(cm.matrix)["mIoU"] for cm in constant]
    best = int(np.argmax(scores))
    return {"images": images, "constant_class": best, "constant_mIoU": scores[best],
            "random_mIoU": compute_metrics(random.matrix)["mIoU"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="build-mindrecord output folder")
    parser.add_argument("--split", default="val")
    args = parser.parse_args()
    from base.labels import CLASS_NAMES

    r = baselines(args.data, args.split)
    print(f"baselines on {args.split} ({r['images']} images): best constant prediction "
          f"({CLASS_NAMES[r['constant_class']]}) mIoU {100 * r['constant_mIoU']:.2f}, "
          f"uniform random mIoU {100 * r['random_mIoU']:.2f}")


if __name__ == "__main__":
    main()
