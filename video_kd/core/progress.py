"""Progress of long work as one periodic log line: done/total, rate and ETA.

A line per item drowns the log at Kinetics scale (240k videos); a line every
few seconds says how far along the work is and when it will end::

    validated 1200/20000 videos, 85/s, ETA 3m40s
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


def format_duration(seconds: float) -> str:
    """``3m40s``, ``1h02m``, ``12s``: short, sortable by eye."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f'{hours}h{minutes:02d}m'
    if minutes:
        return f'{minutes}m{secs:02d}s'
    return f'{secs}s'


class Progress:
    """Counts finished items and logs ``<verb> done/total <unit>, rate/s, ETA`` now and then.

    ``every`` is the minimum time between two lines: the log stays short
    however fast the items go.  The last item always logs (with the total time).
    """

    def __init__(
        self,
        total: int,
        verb: str,
        unit: str = 'items',
        logger: logging.Logger | None = None,
        every: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total = total
        self.verb = verb
        self.unit = unit
        self.done = 0
        self._log = logger or logging.getLogger(__name__)
        self._every = every
        self._clock = clock
        self._start = clock()
        self._last_line = self._start

    def advance(self, count: int = 1) -> None:
        """Record ``count`` more finished items; log when a line is due."""
        self.done += count
        now = self._clock()
        if self.done >= self.total or now - self._last_line >= self._every:
            self._last_line = now
            self._log.info('%s', self.line(now))

    def line(self, now: float | None = None) -> str:
        """The progress line as of ``now``."""
        now = self._clock() if now is None else now
        elapsed = max(now - self._start, 1e-9)
        rate = self.done / elapsed
        head = f'{self.verb} {self.done}/{self.total} {self.unit}, {rate:.0f}/s'
        if self.done >= self.total:
            return f'{head}, done in {format_duration(elapsed)}'
        eta = (self.total - self.done) / rate if rate > 0 else float('inf')
        return f'{head}, ETA {format_duration(eta) if eta != float("inf") else "?"}'
