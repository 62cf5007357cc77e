"""One run at a time per bot process (a backup, a drill), and what holds it — for the "busy" answer."""

from __future__ import annotations

import threading
from datetime import UTC, datetime


class RunGate:
    """A non-reentrant lock that remembers what holds it and since when."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.holder: str | None = None
        self.since: datetime | None = None

    def try_enter(self, what: str) -> bool:
        if not self._lock.acquire(blocking=False):
            return False
        self.holder, self.since = what, datetime.now(UTC)
        return True

    def enter(self, what: str) -> None:
        self._lock.acquire()
        self.holder, self.since = what, datetime.now(UTC)

    def leave(self) -> None:
        self.holder = self.since = None
        self._lock.release()
