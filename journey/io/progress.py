"""A small progress line on a terminal; silent when stderr is not a terminal."""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, enabled: bool | None = None, stream=None):
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self._last = 0.0
        self._shown = False

    def update(self, label: str, done: float, total: float | None = None, unit: str = "", rate: float | None = None):
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last < 0.2:
            return
        self._last = now
        if total:
            frac = min(1.0, done / total)
            bar = "#" * int(frac * 30)
            text = f"\r{label:<10} [{bar:<30}] {frac * 100:5.1f}%"
        else:
            text = f"\r{label:<10} {done:,.0f} {unit}"
        if rate:
            text += f"  {rate:,.0f} events/s"
        self.stream.write(text + "   ")
        self.stream.flush()
        self._shown = True

    def done(self):
        if self.enabled and self._shown:
            self.stream.write("\r" + " " * 78 + "\r")
            self.stream.flush()
            self._shown = False
