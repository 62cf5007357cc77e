"""One thread that tells a clicker what became of a decision that is already committed.

A decision (claim, approve, retry, abort, a form's submission) commits on the request thread
before its ack (bot/slack/app.py); what is left is the ephemeral answer: rendering it and the
``respond()`` POST (or ``chat.postEphemeral``). Those ran on the interaction pool, and when its
queue was full they ran on the request thread *before* the HTTP 200 — at 50 concurrent clicks
that was most of the click's tail latency. Here they run on one dedicated thread with a long
queue: a single thread takes only its share of the interpreter while request threads are busy
acking, so a burst of clicks is acked first and answered right after.

The answer is not durable (an ephemeral about a committed change, which the channel's messages
also show through the outbox): a queue that is full even so runs the answer in the caller, and a
process that dies loses the replies still queued, as it always did.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

from messages.views import Message

log = logging.getLogger("aegis.replies")
Respond = Callable[..., object]


def ephemeral(respond: Respond | None, message: Message) -> None:
    """Answer the clicker or the typer privately through Slack's ``respond``; a failure is logged, not raised."""
    if respond is None:
        return
    try:
        respond(text=message.text, blocks=message.blocks, response_type="ephemeral", replace_original=False)
    except Exception:
        log.warning("could not send an ephemeral reply", exc_info=True)
Answer = Callable[[], Message | None]
Send = Callable[[Message], None]
QUEUE_LIMIT = 2000     # replies waiting; each is a few hundred bytes of closure


class ReplySender:
    def __init__(self, *, limit: int = QUEUE_LIMIT, name: str = "aegis-replies") -> None:
        self._queue: queue.Queue[tuple[Send, Answer] | None] = queue.Queue(maxsize=limit)
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def send(self, deliver: Send, answer: Answer) -> None:
        """Render ``answer()`` and ``deliver`` it on the sender thread (in the caller when the queue is full)."""
        try:
            self._queue.put_nowait((deliver, answer))
        except queue.Full:
            log.warning("the reply queue is full (%d): answering on the request thread", self._queue.maxsize)
            _deliver(deliver, answer)

    def stop(self, timeout: float = 5.0) -> None:
        """Send what is queued (up to ``timeout``), then end the thread."""
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            return
        self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            _deliver(*item)


def _deliver(deliver: Send, answer: Answer) -> None:
    try:
        message = answer()
        if message is not None:
            deliver(message)
    except Exception:
        log.warning("could not send a reply", exc_info=True)
