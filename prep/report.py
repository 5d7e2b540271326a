"""A built split's summary (summary.json: counts, sizes, class frequencies, the build key) and
its printed form."""
from __future__ import annotations

import json

from base.checksums import fingerprint


def _build_key(states: list[dict]) -> str:
    """Identity of a committed split: what the manifest was written from (mtimes excluded)."""
    slim = [{**s, "samples": [{k: v for k, v in e.items() if not k.endswith("_mtime_ns")} for e in s["samples"]]}
            for s in states]
    return fingerprint(json.dumps(slim, sort_keys=True).encode())


def split_summary(split: str, states: list[dict], options: dict, class_names) -> dict:
    """The summary of a split of a data set with these classes (train-index order)."""
    totals = [0] * (len(class_names) + 1)
    for s in states:
        for e in s["samples"]:
            totals = [a + b for a, b in zip(totals, e["pixels"])]
    labeled = sum(totals[:-1])
    all_pixels = sum(totals)
    return {
        "split": split, "samples": sum(len(s["samples"]) for s in states), "options": options,
        "shards": [{"name": s["name"], "samples": len(s["samples"]), "bytes": sum(s["file_bytes"])} for s in states],
        "bytes": sum(sum(s["file_bytes"]) for s in states),
        "class_pixels": dict(zip(class_names, totals[:-1])),
        "class_frequency": {n: (c / labeled if labeled else 0.0) for n, c in zip(class_names, totals[:-1])},
        "ignore_pixels": totals[-1], "ignore_fraction": totals[-1] / all_pixels if all_pixels else 0.0,
        "build_key": _build_key(states),
    }


_SHOWN = 20  # a data set with more classes is printed by its most frequent ones (all in summary.json)
_LINE = 88    # characters of class frequencies per printed line


def format_summary(summary: dict) -> str:
    freq = summary["class_frequency"]
    names = list(freq)
    if len(names) <= _SHOWN:
        shown, what = names, "class frequencies (of labeled pixels):"
    else:
        shown = sorted(names, key=lambda n: -freq[n])[:_SHOWN]
        what = f"the {_SHOWN} most frequent of {len(names)} classes (of labeled pixels; all in summary.json):"
    lines = [f"{summary['split']}: {summary['samples']} samples in {len(summary['shards'])} shards, "
             f"{summary['bytes'] / 1e6:.1f} MB, ignore {summary['ignore_fraction']:.1%} of pixels; {what}"]
    labels = {name: name.split(",")[0] for name in shown}  # ADE20K's "building, edifice": its first name
    width = max(13, *map(len, labels.values()))
    items = [f"{labels[name]:>{width}} {freq[name]:6.2%}" for name in shown]
    per_line = max(1, _LINE // (width + 9))
    for i in range(0, len(items), per_line):
        lines.append("  " + "  ".join(items[i:i + per_line]))
    return "\n".join(lines)
