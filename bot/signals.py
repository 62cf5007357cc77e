"""``POST /signals``: an endpoint-security tool reports ransomware to Aegis (M2), HMAC-signed.

Order of checks, so that nothing a stranger sends is parsed, stored or logged:

1. the route exists only when ``monitoring.signals.secret_env`` names a variable (404 otherwise) and
   that variable holds a secret (503 otherwise) — there is no default secret;
2. ``POST`` only (405); a body above 64 KiB is refused before it is read (413);
3. ``X-Aegis-Timestamp`` (Unix seconds, within 5 minutes) and ``X-Aegis-Signature: sha256=<hex>``,
   HMAC-SHA256 over ``timestamp + "." + body``, compared in constant time (401);
4. the authenticated body: UTF-8 JSON object (400), the fields ``source``, ``kind``, ``host``,
   ``detail``, ``at`` (422) — recovery/monitor/signals.py;
5. stored (``monitor_signal``) and answered 202; the monitor's next cycle turns it into a
   CRITICAL ``ransomware`` condition (recovery/monitor/risk.py).

Every refusal is a 4xx with a one-line JSON ``{"error": …}``; the log line names the reason and
the client, never the body. A store that cannot take the signal is a 503 (the tool retries).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from wsgiref.types import StartResponse, WSGIEnvironment

from bot.config import Config
from recovery.monitor.signals import MAX_BODY_BYTES, SignalRefused, SignalStore, parse, verify
from statemachines.store import Store

log = logging.getLogger("aegis.signals")
PATH = "/signals"
_REASONS = {202: "Accepted", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed",
            411: "Length Required", 413: "Content Too Large", 422: "Unprocessable Content",
            503: "Service Unavailable"}


class SignalsApp:
    def __init__(self, config: Config, store: Store, *, clock: Callable[[], float] = time.time) -> None:
        self.secret_env = config.monitoring.signals.secret_env
        self.signals = SignalStore(store)
        self.clock = clock

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        try:
            status, answer = self._handle(environ)
        except SignalRefused as exc:
            log.warning("signal refused (%d): %s — from %s", exc.status, exc, environ.get("REMOTE_ADDR", "?"))
            status, answer = exc.status, {"error": str(exc)}
        body = json.dumps(answer).encode() + b"\n"
        start_response(f"{status} {_REASONS[status]}", [("Content-Type", "application/json"),
                                                       ("Content-Length", str(len(body)))])
        return [body]

    def _handle(self, environ: WSGIEnvironment) -> tuple[int, dict[str, object]]:
        if self.secret_env is None or environ.get("PATH_INFO") != PATH:
            raise SignalRefused(404, "signals are not configured (monitoring.signals.secret_env)")
        secret = os.environ.get(self.secret_env, "")
        if not secret.strip():
            raise SignalRefused(503, f"signals are not accepted: {self.secret_env} is not set")
        if environ.get("REQUEST_METHOD") != "POST":
            raise SignalRefused(405, "POST a signed JSON signal")
        raw = _read_body(environ)
        digest = verify(secret, environ.get("HTTP_X_AEGIS_TIMESTAMP"), environ.get("HTTP_X_AEGIS_SIGNATURE"), raw,
                        self.clock())
        signal = parse(raw)
        try:
            signal_id = self.signals.record(signal, digest)
        except Exception as exc:   # the store is down: the tool should retry, nothing was kept
            log.error("could not store a %s signal from %s: %s", signal.kind, signal.source, type(exc).__name__)
            raise SignalRefused(503, "the signal could not be stored; retry") from None
        if signal_id is None:
            return 202, {"accepted": True, "duplicate": True}
        log.warning("signal %s accepted: %s from %s on %s", signal_id, signal.kind, signal.source, signal.host or "?")
        return 202, {"accepted": True, "id": signal_id}


def _read_body(environ: WSGIEnvironment) -> bytes:
    """The body, refused before reading when it is larger than 64 KiB or has no length."""
    length = environ.get("CONTENT_LENGTH") or ""
    if not length.isdigit():
        raise SignalRefused(411, "Content-Length is required")
    if int(length) > MAX_BODY_BYTES:
        raise SignalRefused(413, f"the body is larger than {MAX_BODY_BYTES // 1024} KiB")
    body: bytes = environ["wsgi.input"].read(int(length))
    return body
