"""The one source of time: unix seconds (UTC), injected into every protocol so tests move it."""

from __future__ import annotations

import time


class Clock:
    def now(self) -> int:
        raise NotImplementedError


class SystemClock(Clock):
    def now(self) -> int:
        return int(time.time())


class FixedClock(Clock):
    """A clock that only moves when told to."""

    def __init__(self, start: int = 1_700_000_000):
        self.t = int(start)

    def now(self) -> int:
        return self.t

    def set(self, t: int) -> None:
        self.t = int(t)

    def advance(self, seconds: int) -> None:
        self.t += int(seconds)
