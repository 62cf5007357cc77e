"""Signals from endpoint-security tools (M2): their signature, their shape, where they are kept.

A tool ``POST``s a JSON object to ``/signals`` (bot/signals.py serves it) signed with HMAC-SHA256
over ``timestamp + "." + body`` with a shared secret. This module holds what does not depend on
HTTP: :func:`verify` (replay window, constant-time compare), :func:`parse` (the fields and their
limits), :class:`SignalStore` (the ``monitor_signal`` rows) and :func:`signal_probe`, the monitor
check that fails while a signal of its kind arrived within the hold window — the ``ransomware``
risk rule turns each reporting source into its own condition (``ransomware:signal <source>``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from recovery.monitor.checks import Observation, Probe
from recovery.redact import redact
from statemachines.json_types import JsonObject
from statemachines.models import MonitorSignal, utcnow
from statemachines.store import Store

KINDS = ("ransomware",)            # what a signal may report (the ransomware rule reads these)
MAX_BODY_BYTES = 64 * 1024
REPLAY_WINDOW_SECONDS = 300        # a timestamp further than this from our clock is refused
SIGNATURE_PREFIX = "sha256="
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_SIGNATURE = re.compile(r"sha256=[0-9a-f]{64}")
_LIMITS = {"source": 200, "host": 255, "detail": 2000}


class SignalRefused(Exception):
    """A request that is not a valid signal; ``status`` is the HTTP answer, the text its one line."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


@dataclass(frozen=True)
class Signal:
    source: str
    kind: str
    host: str
    detail: str
    at: datetime

    def facts(self) -> JsonObject:
        return {**asdict(self), "at": self.at.isoformat()}


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The ``X-Aegis-Signature`` value for ``body`` sent at ``timestamp`` (what a sender computes)."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return SIGNATURE_PREFIX + mac.hexdigest()


def verify(secret: str, timestamp: str | None, signature: str | None, body: bytes, now: float) -> str:
    """Check the headers against the raw body; the digest that identifies this request, or refuse (401)."""
    if not timestamp or not _TIMESTAMP.fullmatch(timestamp):
        raise SignalRefused(401, "X-Aegis-Timestamp must be the Unix time in whole seconds")
    if abs(now - int(timestamp)) > REPLAY_WINDOW_SECONDS:
        raise SignalRefused(401, "X-Aegis-Timestamp is more than 5 minutes from the server's clock")
    if not signature or not _SIGNATURE.fullmatch(signature):
        raise SignalRefused(401, "X-Aegis-Signature must be sha256=<64 hex digits>")
    if not hmac.compare_digest(sign(secret, timestamp, body), signature):
        raise SignalRefused(401, "signature does not match")
    return hashlib.sha256(timestamp.encode() + b"." + body).hexdigest()


def parse(body: bytes) -> Signal:
    """The signal in an authenticated body; 400 for what is not JSON, 422 for wrong fields."""
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise SignalRefused(400, "the body is not UTF-8 JSON") from None
    if not isinstance(data, dict):
        raise SignalRefused(400, "the body must be a JSON object")
    fields = {name: _text(data, name, required=name == "source") for name in _LIMITS}
    kind = data.get("kind")
    if kind not in KINDS:
        raise SignalRefused(422, f"kind must be one of: {', '.join(KINDS)}")
    return Signal(fields["source"], str(kind), fields["host"], redact(fields["detail"]), _time(data.get("at")))


def _text(data: JsonObject, name: str, *, required: bool) -> str:
    value = data.get(name, "")
    if not isinstance(value, str):
        raise SignalRefused(422, f"{name} must be a string")
    value = " ".join(value.split())
    if required and not value:
        raise SignalRefused(422, f"{name} is required")
    if len(value) > _LIMITS[name]:
        raise SignalRefused(422, f"{name} is longer than {_LIMITS[name]} characters")
    return value


def _time(value: object) -> datetime:
    if not isinstance(value, str):
        raise SignalRefused(422, "at must be an ISO 8601 time, e.g. 2026-11-30T02:14:00Z")
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        raise SignalRefused(422, "at must be an ISO 8601 time, e.g. 2026-11-30T02:14:00Z") from None
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


class SignalStore:
    def __init__(self, store: Store) -> None:
        self.store = store

    def record(self, signal: Signal, digest: str) -> int | None:
        """Store the signal; its id, or None when this very request was stored already (a replay)."""
        row = MonitorSignal(digest=digest, source=signal.source, kind=signal.kind, host=signal.host,
                            detail=signal.detail, at=signal.at)
        try:
            with self.store.session() as session:
                session.add(row)
                session.flush()
                return row.id
        except IntegrityError:
            return None

    def recent(self, kind: str, since: datetime) -> list[MonitorSignal]:
        """Signals of ``kind`` received since ``since``, oldest first."""
        query = (select(MonitorSignal).where(MonitorSignal.kind == kind, col(MonitorSignal.received_at) >= since)
                 .order_by(col(MonitorSignal.received_at), col(MonitorSignal.id)))
        with self.store.session() as session:
            return list(session.exec(query))


def signal_facts(row: MonitorSignal) -> JsonObject:
    """What an incident's evidence shows of one stored signal (plain JSON)."""
    return {"id": row.id, "source": row.source, "kind": row.kind, "host": row.host, "detail": row.detail,
            "at": row.at.isoformat(), "received_at": row.received_at.isoformat()}


def signal_probe(kind: str, hold: timedelta, recent: Callable[[str, datetime], list[MonitorSignal]],
                 now: Callable[[], datetime] = utcnow) -> Probe:
    """Fails while a ``kind`` signal arrived within ``hold``; ``facts["signals"]`` holds the newest per source."""
    def probe(timeout: float) -> Observation:
        newest: dict[str, JsonObject] = {}
        for row in recent(kind, now() - hold):
            newest[row.source] = signal_facts(row)       # oldest first: the newest per source wins
        minutes = f"{hold.total_seconds() / 60:g}"
        if not newest:
            return Observation(True, 0.0, "signals", f"no {kind} signal in the last {minutes} min",
                               {"signals": []})
        sources = ", ".join(sorted(newest))
        return Observation(False, float(len(newest)), "signals",
                           f"{kind} reported by {sources} in the last {minutes} min",
                           {"signals": list(newest.values()), "changed": False})
    return probe
