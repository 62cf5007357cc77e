"""Socket Mode: Bolt's built-in handler, plus the guarantee that a redelivered envelope is not run twice.

Slack redelivers a Socket Mode envelope whose ack it did not get in time — ``retry_attempt`` > 0, or
the same ``envelope_id`` again on the new connection after a reconnect (the ack was sent on a
connection that broke). Over HTTP a retried request runs again and the decisions' own idempotency
refuses the duplicate (one vote per user and attempt, one ledger row per step attempt: "already
approved"), which also holds here. On top of that, this handler remembers the envelopes it has
answered: a redelivery of one is answered with the first delivery's ack and runs nothing — so a
redelivered declaration does not declare a second incident, and a click is not answered twice.
A redelivery that arrives while the first delivery is still running waits for it and shares its ack.

The memory is this process's: after a restart a redelivered envelope runs again, and the
decisions' idempotency is what stands (README, Known gaps).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from time import monotonic

from slack_bolt import App, BoltResponse
from slack_bolt.adapter.socket_mode import SocketModeHandler
from slack_bolt.adapter.socket_mode.internals import run_bolt_app, send_response
from slack_sdk.socket_mode.builtin import SocketModeClient
from slack_sdk.socket_mode.request import SocketModeRequest

log = logging.getLogger("aegis.socket_mode")


@dataclass
class _Answer:
    done: threading.Event = field(default_factory=threading.Event)
    response: BoltResponse | None = None
    at: float = field(default_factory=monotonic)


class EnvelopeMemory:
    """The acks of recently handled envelopes, by envelope_id (bounded in count and age)."""

    def __init__(self, limit: int = 2000, max_age: float = 3600.0) -> None:
        self.limit = limit
        self.max_age = max_age
        self._lock = threading.Lock()
        self._answers: OrderedDict[str, _Answer] = OrderedDict()

    def claim(self, envelope_id: str) -> tuple[_Answer, bool]:
        """The envelope's answer slot, and whether this delivery is the first (it must run)."""
        with self._lock:
            self._forget_old()
            found = self._answers.get(envelope_id)
            if found is not None:
                return found, False
            answer = self._answers[envelope_id] = _Answer()
            return answer, True

    def finish(self, envelope_id: str, answer: _Answer, response: BoltResponse | None) -> None:
        """Keep an answer that was acked (status 200); forget one that was not, so a redelivery runs
        again — nothing was acknowledged, as over HTTP, where Slack retries a failed request."""
        answer.response = response if response is not None and response.status == 200 else None
        if answer.response is None:
            with self._lock:
                self._answers.pop(envelope_id, None)
        answer.done.set()

    def _forget_old(self) -> None:
        now = monotonic()
        while self._answers:
            oldest_id, oldest = next(iter(self._answers.items()))
            if len(self._answers) <= self.limit and now - oldest.at <= self.max_age:
                return
            if not oldest.done.is_set():
                return   # still running: keep it (and whatever came after it)
            self._answers.pop(oldest_id)


class RedeliverySafeHandler(SocketModeHandler):
    """Bolt's built-in Socket Mode handler that answers a redelivered envelope from memory."""

    def __init__(self, app: App, app_token: str, *, ping_interval: float = 10.0,
                 memory: EnvelopeMemory | None = None) -> None:
        super().__init__(app, app_token, ping_interval=ping_interval)
        self.memory = memory or EnvelopeMemory()

    def handle(self, client: SocketModeClient, req: SocketModeRequest) -> None:  # type: ignore[override]
        start = time.time()
        answer, first = self.memory.claim(req.envelope_id)
        if not first:
            self._answer_again(client, req, answer, start)
            return
        response: BoltResponse | None = None
        try:
            response = run_bolt_app(self.app, req)
        finally:
            self.memory.finish(req.envelope_id, answer, response)
        send_response(client, req, response, start)

    def _answer_again(self, client: SocketModeClient, req: SocketModeRequest, answer: _Answer,
                      start: float, wait: float = 30.0) -> None:
        answer.done.wait(wait)
        if answer.response is None:
            # the first delivery was not acked (or is still running after ``wait``): leave this one
            # unacked too, so Slack delivers it again and it is decided then
            log.info("Socket Mode envelope %s (%s) redelivered while its first delivery was not acked; "
                     "not acked", req.envelope_id, req.type)
            return
        log.info("Socket Mode envelope %s (%s) redelivered (retry_attempt %s): acked again with the first "
                 "delivery's answer, nothing run twice", req.envelope_id, req.type, req.retry_attempt)
        send_response(client, req, answer.response, start)
