"""Progress reporting shared by every long-running stage.

On a terminal: a live bar on stderr. In logs (stderr not a TTY): a plain line at most
every `every_s` seconds and at the end, so CI logs stay readable.
"""
from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total: int, label: str, unit: str = "it", every_s: float = 10.0, stream=None):
        self.total = max(int(total), 0)
        self.label = label
        self.unit = unit
        self.every_s = every_s
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.done = 0
        self.start = time.perf_counter()
        self._last = 0.0
        self.postfix = ""

    def update(self, n: int = 1, postfix: str | None = None) -> None:
        self.done += n
        if postfix is not None:
            self.postfix = postfix
        now = time.perf_counter()
        if self.tty or now - self._last >= self.every_s or self.done >= self.total:
            self._last = now
            self._render(now)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def rate(self) -> float:
        return self.done / max(self.elapsed, 1e-9)

    def _render(self, now: float) -> None:
        elapsed = now - self.start
        rate = self.done / max(elapsed, 1e-9)
        eta = (self.total - self.done) / rate if rate > 0 and self.total else 0.0
        frac = self.done / self.total if self.total else 1.0
        text = (f"{self.label}: {self.done}/{self.total} {self.unit} "
                f"[{elapsed:6.1f}s, {rate:.2f} {self.unit}/s, ETA {eta:6.1f}s]")
        if self.postfix:
            text += " " + self.postfix
        if self.tty:
            width = 24
            bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
            self.stream.write(f"\r|{bar}| {text}\033[K")
            if self.done >= self.total:
                self.stream.write("\n")
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty and self.done < self.total:
            self.stream.write("\n")
            self.stream.flush()
