"""Injected Web API failures, so tests can prove the bot survives rate limits and Slack errors.

A fault answers the next ``count`` calls of one method (or ``"*"`` for any method) instead of
the real handler: HTTP 429 with ``Retry-After`` (Slack's rate limit), another HTTP status, or
HTTP 200 with ``{"ok": false, "error": ...}``. Faults for one method are used in the order added.

A *hold* (``hold_seconds`` > 0) is no failure: the call is received, counted (``held``), kept
waiting until ``release_holds()`` or the hold's end, and then answered by the real handler — so a
test can kill the bot while Slack has the request but the bot has not seen the answer.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class Fault:
    method: str
    remaining: int
    status: int = 200
    error: str = "internal_error"
    retry_after: int | None = None
    delay_seconds: float = 0.0
    hold_seconds: float = 0.0   # > 0: a pass-through hold, not a failure (see the module docstring)

    def response(self) -> tuple[int, dict[str, Any], dict[str, str]]:
        """(HTTP status, JSON body, extra headers) for one faulted call."""
        headers = {"Retry-After": str(self.retry_after)} if self.retry_after is not None else {}
        return self.status, {"ok": False, "error": self.error}, headers


def fault_from_json(spec: dict[str, Any]) -> Fault:
    """Build a fault from the ``POST /_emulator/faults`` body; raises ValueError when malformed."""
    method = spec.get("method")
    if not isinstance(method, str) or not method:
        raise ValueError("'method' is required, e.g. \"chat.postMessage\" or \"*\"")
    count = int(spec.get("count", 1))
    if count < 1:
        raise ValueError("'count' must be at least 1")
    status = int(spec.get("status", 200))
    retry_after: int | None
    if status == 429:
        retry_after = int(spec.get("retry_after", 1))
        error = str(spec.get("error", "ratelimited"))
    else:
        retry_after = int(spec["retry_after"]) if "retry_after" in spec else None
        error = str(spec.get("error", "internal_error"))
    return Fault(method, count, status, error, retry_after, float(spec.get("delay_seconds", 0.0)),
                 float(spec.get("hold_seconds", 0.0)))


class FaultInjector:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._held: dict[str, int] = {}
        self._release = threading.Event()

    def add(self, fault: Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def take(self, method: str) -> Fault | None:
        """Consume one use of the first fault that matches ``method``, if any; a hold waits here
        and returns None (the real handler answers)."""
        with self._lock:
            fault = next((f for f in self._faults if f.method in (method, "*")), None)
            if fault is None:
                return None
            fault.remaining -= 1
            if fault.remaining <= 0:
                self._faults.remove(fault)
            if not fault.hold_seconds:
                return fault
            self._held[method] = self._held.get(method, 0) + 1
        self._release.wait(fault.hold_seconds)
        return None

    def held(self, method: str) -> int:
        """How many calls of ``method`` a hold has received so far."""
        with self._lock:
            return self._held.get(method, 0)

    def release_holds(self) -> None:
        """End every hold now (and any later one at once, until ``clear``)."""
        self._release.set()

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()
            self._held.clear()
            self._release.clear()

    def pending(self) -> list[dict[str, Any]]:
        with self._lock:
            return [asdict(f) for f in self._faults]
