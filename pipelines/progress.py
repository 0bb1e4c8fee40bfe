"""Progress of a pass a person can follow: counts, hours of audio and an ETA. On a terminal one line is
rewritten in place (at most 4 times a second); elsewhere (a log, ``ray job submit``) a plain line is
printed every ``every_s`` seconds, and one when the pass ends.

    ingest    412/1000 inputs   3.41 h audio   41%   2m10s elapsed   ETA 3m07s
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _clock(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class Progress:
    def __init__(self, phase: str, total: int, unit: str, total_weight: float = 0.0, every_s: float = 10.0,
                 stream: TextIO | None = None, enabled: bool = True, tty: bool | None = None):
        """``total`` items of ``unit``; ``total_weight`` (e.g. bytes) drives the ETA when items differ in size."""
        self.phase, self.total, self.unit = phase, total, unit
        self.total_weight = total_weight
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.enabled = enabled and total > 0
        self.every_s = every_s if not self.tty else 0.25
        self.done, self.weight, self.audio_s = 0, 0.0, 0.0
        self.counts_audio = unit in ("inputs", "segments")
        self.t0 = self._last = time.monotonic()
        self._width = 0

    def update(self, n: int = 1, weight: float = 0.0, audio_s: float = 0.0) -> None:
        self.done += n
        self.weight += weight
        self.audio_s += audio_s
        now = time.monotonic()
        if self.enabled and now - self._last >= self.every_s:
            self._last = now
            self._emit(final=False)

    def line(self) -> str:
        elapsed = time.monotonic() - self.t0
        share = (self.weight / self.total_weight if self.total_weight > 0 else self.done / self.total) if self.total else 1.0
        share = min(1.0, share)
        eta = elapsed * (1 - share) / share if share > 0 else 0.0
        # Passes over audio count its hours; the others (build units, shards) have none to show.
        audio = f"{self.audio_s / 3600:.2f} h audio   " if self.audio_s or self.counts_audio else ""
        text = f"{self.phase:<8} {self.done}/{self.total} {self.unit}   {audio}{100 * share:.0f}%   {_clock(elapsed)} elapsed"
        if self.done < self.total:
            text += f"   ETA {_clock(eta)}" if share > 0 else "   ETA …"
        return text

    def _emit(self, final: bool) -> None:
        text = self.line()
        if self.tty:
            pad = max(0, self._width - len(text))
            self.stream.write("\r" + text + " " * pad + ("\n" if final else ""))
            self._width = len(text)
        else:
            self.stream.write(f"[audiomill] {text}\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self._emit(final=True)
