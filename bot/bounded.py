"""Thread pools with a bounded queue, so a flood of work cannot grow memory without limit.

Two kinds of submission, because two kinds of work arrive:

- **New work a user asked for** (a slash command, a click, a backup): ``try_submit`` refuses at
  once when the pool is full (``Busy``), and the Slack layer tells the user "Aegis is busy — try
  again in a moment". Nothing was started, so nothing is lost: the user repeats the request.
- **Internal follow-up work** (posting after a committed transition, running the engine after an
  approval): the state change is already committed, so dropping the follow-up would leave Slack
  behind the database. ``submit`` therefore never refuses: it waits up to ``wait_seconds`` for a
  free slot and then runs the work in the submitting thread ("caller runs"), which slows the
  producer down instead of losing the work. A worker of the same pool that submits while the pool
  is full runs the work inline at once: waiting for a slot that only its own pool can free would
  deadlock.

``AEGIS_QUEUE_LIMIT`` overrides every pool's queue length (tests use a tiny one).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

log = logging.getLogger("aegis.bounded")
T = TypeVar("T")


class Busy(Exception):
    """The pool is full; the user's new work was not started."""


def queue_limit(default: int) -> int:
    """The queue length to use: ``AEGIS_QUEUE_LIMIT`` when set to a whole number ≥ 0, else ``default``."""
    raw = os.environ.get("AEGIS_QUEUE_LIMIT", "").strip()
    return int(raw) if raw.isdigit() else default


class BoundedPool:
    """At most ``max_workers`` running plus ``queue_size`` waiting tasks."""

    def __init__(self, max_workers: int, queue_size: int, *, thread_name_prefix: str,
                 wait_seconds: float = 5.0) -> None:
        self.max_workers = max_workers
        self.queue_size = queue_size
        self.wait_seconds = wait_seconds
        self._prefix = thread_name_prefix
        self._slots = threading.BoundedSemaphore(max_workers + queue_size)
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=thread_name_prefix)

    def _start(self, fn: Callable[..., T], args: tuple[object, ...]) -> Future[T]:
        def run() -> T:
            try:
                return fn(*args)
            finally:
                self._slots.release()
        try:
            return self._executor.submit(run)
        except BaseException:
            self._slots.release()
            raise

    def try_submit(self, fn: Callable[..., T], *args: object) -> Future[T]:
        """New user work: start it, or raise ``Busy`` at once when the pool is full."""
        if not self._slots.acquire(blocking=False):
            raise Busy(self._prefix)
        return self._start(fn, args)

    def submit(self, fn: Callable[..., T], *args: object) -> Future[T]:
        """Internal work: never refused (see the module docstring for the policy)."""
        own_worker = threading.current_thread().name.startswith(self._prefix + "_")
        if self._slots.acquire(timeout=0 if own_worker else self.wait_seconds):
            return self._start(fn, args)
        log.warning("%s pool is full (%d running, %d queued): running %s in the submitting thread",
                    self._prefix, self.max_workers, self.queue_size, getattr(fn, "__name__", "work"))
        done: Future[T] = Future()
        try:
            done.set_result(fn(*args))
        except Exception as exc:
            done.set_exception(exc)
        return done

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._executor.shutdown(wait=wait, cancel_futures=cancel_futures)
