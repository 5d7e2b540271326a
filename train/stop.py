"""Stopping a run on request: SIGINT or SIGTERM during training finishes the step in flight, then
the loop writes that step's checkpoint and ends; a second signal stops at once.

Under msrun the ranks agree: every step each rank contributes which signals it received to an
exact all-reduce (`base.device.all_reduce_counts`), so a signal reaching any one rank stops every
rank after the same step (docs/training.md, "Stopping a run").
"""
from __future__ import annotations

import signal

import numpy as np

from base.device import all_reduce_counts

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """Within `with`: the first SIGINT/SIGTERM is recorded (and said on `log`), a second one ends
    the process at once (exit 128 + signal). The previous handlers come back on exit."""

    def __init__(self, log):
        self.log = log
        self.received: int | None = None
        self._previous: dict = {}

    def __enter__(self):
        for signum in SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        return False

    def _handle(self, signum, frame):
        if self.received is not None:
            raise SystemExit(128 + signum)
        self.received = signum
        self.log(f"{signal.Signals(signum).name}: finishing the step in flight, then writing its checkpoint "
                 "(send it again to stop at once, without one)")

    def agreed(self, group_size: int) -> int | None:
        """The signal every rank stops on after this step, or None to go on. With several ranks a
        collective: every rank must call it after every step."""
        # MindSpore's runtime installs its own SIGINT handler (it re-raises SIGINT as SIGTERM) once
        # it has run a graph: put ours back after every step so Ctrl-C stays SIGINT (exit 130).
        for signum in SIGNALS:
            signal.signal(signum, self._handle)
        if group_size == 1:
            return self.received
        counts = all_reduce_counts(np.array([self.received == s for s in SIGNALS], np.int64), group_size)
        return next((s for s, n in zip(SIGNALS, counts) if n > 0), None)
