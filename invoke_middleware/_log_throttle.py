"""How often a recurring failure is written to the log.

A failure met by every request (a store that does not answer, a hook that raises) would
otherwise write one line per request, and flood the log exactly when it matters. A
:class:`LogThrottle` lets one line through per interval for each of its keys, and says how
many it left out in between.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Hashable

#: Seconds between two lines about one recurring failure.
LOG_INTERVAL = 10.0


class LogThrottle:
    """Whether a recurring failure of each key is due to be logged: the first time, then at
    most once per ``interval`` seconds of ``clock``. Thread-safe; keys are held until the
    throttle goes, so they should be few (an engine's URL, a hook)."""

    def __init__(
        self, interval: float = LOG_INTERVAL, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.interval = interval
        self.clock = clock
        self._lock = threading.Lock()
        #: By key: when it was last let through, and how many were left out since.
        self._last: dict[Hashable, tuple[float, int]] = {}

    def due(self, key: Hashable = None) -> int | None:
        """``None`` when a line about ``key`` was let through less than ``interval`` ago (this
        one is left out and counted); otherwise the number left out since that line."""
        now = self.clock()
        with self._lock:
            last, left_out = self._last.get(key, (-math.inf, 0))
            if now - last < self.interval:
                self._last[key] = (last, left_out + 1)
                return None
            self._last[key] = (now, 0)
        return left_out
