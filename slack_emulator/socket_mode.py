"""Slack's Socket Mode, emulated: ``apps.connections.open`` tickets and a WebSocket server speaking the protocol.

When the emulator runs in Socket Mode, whatever the workspace would POST to the bot's request URL
(slash commands, clicks, modal submissions, events) travels as an *envelope* over a WebSocket the
bot opened itself, the way Slack does it:

* ``apps.connections.open`` (app-level token ``xapp-…``) hands out a one-use URL
  ``ws://127.0.0.1:<port>/link/?ticket=…``; a connection without a valid ticket is refused (401).
* On connect the server sends ``hello`` (num_connections, debug_info, connection_info).
* Envelopes: ``{"type": "slash_commands" | "interactive" | "events_api", "envelope_id": …,
  "payload": …, "accepts_response_payload": …, "retry_attempt": n, "retry_reason": …}``.
* The client acks with ``{"envelope_id": …, "payload": …}``; the payload is what an HTTP response
  body would have been (a slash command's reply, a view_submission's ``response_action``).
* An envelope not acked within ``ack_timeout`` seconds — or whose connection closed before its ack
  — is redelivered with ``retry_attempt + 1`` (up to ``max_retries`` times), as Slack does.
* ``disconnect`` with reason ``refresh_requested`` on demand (``refresh()``) or after a connection
  has lived ``refresh_after`` seconds; the client then opens a new connection.

waitress cannot upgrade an HTTP connection, so the WebSocket server (the ``websockets`` library,
imported by this module only) runs on a port of its own in a background thread. Everything it did
is kept for inspection: ``connections()`` and ``envelopes()`` (also at ``/_emulator/socket/*``).
"""

from __future__ import annotations

import json
import logging
import secrets
import socket
import struct
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlparse

from flask import Blueprint, jsonify, request
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.sync.server import Server, ServerConnection, serve

from slack_emulator.driver import SocketAck
from slack_emulator.model import APP_ID, SlackError

log = logging.getLogger(__name__)

ENVELOPE_KINDS = ("slash_commands", "interactive", "events_api")


@dataclass
class _Link:
    """One WebSocket connection the bot opened."""

    id: str
    ticket: str
    ws: ServerConnection
    opened_at: float = field(default_factory=time.time)
    closed_at: float | None = None
    close_reason: str | None = None        # "client", "dropped", "refreshed", "server_stopped"
    refresh_sent_at: float | None = None

    @property
    def live(self) -> bool:
        return self.closed_at is None

    @property
    def usable(self) -> bool:
        """Live and not asked to go away: new envelopes go here."""
        return self.live and self.refresh_sent_at is None

    def record(self) -> dict[str, Any]:
        return {"id": self.id, "opened_at": self.opened_at, "closed_at": self.closed_at,
                "close_reason": self.close_reason, "refresh_sent_at": self.refresh_sent_at}


@dataclass
class _Envelope:
    envelope_id: str
    kind: str
    payload: dict[str, Any]
    accepts_response_payload: bool
    attempts: list[dict[str, Any]] = field(default_factory=list)   # {retry_attempt, connection, at}
    acks: list[dict[str, Any]] = field(default_factory=list)       # {connection, at, payload, lost}
    acked: threading.Event = field(default_factory=threading.Event)
    ack_payload: dict[str, Any] | None = None
    gave_up: bool = False

    def last_connection(self) -> str | None:
        return self.attempts[-1]["connection"] if self.attempts else None

    def record(self) -> dict[str, Any]:
        return {"envelope_id": self.envelope_id, "type": self.kind, "payload": self.payload,
                "attempts": list(self.attempts), "acks": list(self.acks), "acked": self.acked.is_set(),
                "ack_payload": self.ack_payload, "gave_up": self.gave_up}


class SocketModeServer:
    """The Socket Mode side of the emulated workspace (see the module docstring)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, app_token: str | None = None,
                 ack_timeout: float = 3.0, max_retries: int = 3, refresh_after: float | None = None) -> None:
        self.host = host
        self.port = port
        self.app_token = app_token     # None: any xapp- token is accepted
        self.ack_timeout = ack_timeout
        self.max_retries = max_retries
        self.refresh_after = refresh_after
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._tickets: set[str] = set()
        self._links: list[_Link] = []
        self._envelopes: dict[str, _Envelope] = {}
        self._lose_acks = 0
        self._server: Server | None = None
        self._stop = threading.Event()

    # ---- lifecycle ---------------------------------------------------------------------------

    def start(self) -> SocketModeServer:
        self._server = serve(self._serve_link, self.host, self.port, process_request=self._check_ticket,
                             compression=None, ping_interval=None, logger=log)
        self.port = self._server.socket.getsockname()[1]
        threading.Thread(target=self._server.serve_forever, name=f"socket-mode-{self.port}", daemon=True).start()
        threading.Thread(target=self._redeliver_loop, name="socket-mode-redeliver", daemon=True).start()
        log.info("Socket Mode server listening on ws://%s:%s/link/", self.host, self.port)
        return self

    def stop(self) -> None:
        self._stop.set()
        for link in self._live_links():
            self._close(link, "server_stopped", hard=False)
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    # ---- apps.connections.open ---------------------------------------------------------------

    def open_url(self, token: str | None) -> dict[str, Any]:
        """The Web API method's answer: a one-use WebSocket URL for an app-level token."""
        if not token:
            raise SlackError("not_authed")
        if not token.startswith("xapp-"):
            raise SlackError("not_allowed_token_type")
        if self.app_token is not None and not secrets.compare_digest(token.encode(), self.app_token.encode()):
            raise SlackError("invalid_auth")
        ticket = uuid.uuid4().hex
        with self._lock:
            self._tickets.add(ticket)
        return {"ok": True, "url": f"ws://{self.host}:{self.port}/link/?ticket={ticket}&app_id={APP_ID}"}

    def _check_ticket(self, connection: ServerConnection, req: Request) -> Response | None:
        parsed = urlparse(req.path)
        ticket = (parse_qs(parsed.query).get("ticket") or [""])[0]
        with self._lock:
            valid = parsed.path.rstrip("/") == "/link" and ticket in self._tickets
            self._tickets.discard(ticket)   # a ticket opens one connection
        if not valid:
            return connection.respond(401, "invalid or used ticket\n")
        connection.ticket = ticket  # type: ignore[attr-defined]  # read back in _serve_link
        return None

    # ---- one connection ------------------------------------------------------------------------

    def _serve_link(self, ws: ServerConnection) -> None:
        link = _Link(id=f"conn-{uuid.uuid4().hex[:8]}", ticket=getattr(ws, "ticket", ""), ws=ws)
        with self._changed:
            self._links.append(link)
            count = len([x for x in self._links if x.live])
            self._changed.notify_all()
        ws.send(json.dumps({
            "type": "hello", "num_connections": count,
            "debug_info": {"host": f"applink-emulator-{self.port}", "build_number": 1,
                           "approximate_connection_time": 18060},
            "connection_info": {"app_id": APP_ID},
        }))
        try:
            for message in ws:
                self._on_client_message(link, message)
        except ConnectionClosed:
            pass
        finally:
            self._mark_closed(link, "client")

    def _on_client_message(self, link: _Link, message: str | bytes) -> None:
        try:
            body = json.loads(message)
        except (TypeError, ValueError):
            log.warning("Socket Mode: a frame that is not JSON on %s", link.id)
            return
        envelope_id = body.get("envelope_id") if isinstance(body, dict) else None
        with self._changed:
            envelope = self._envelopes.get(envelope_id) if isinstance(envelope_id, str) else None
            if envelope is None:
                log.warning("Socket Mode: an ack for an unknown envelope on %s", link.id)
                return
            lost = self._lose_acks > 0 and not envelope.acked.is_set()
            payload = body.get("payload") if isinstance(body.get("payload"), dict) else None
            envelope.acks.append({"connection": link.id, "at": time.time(), "payload": payload, "lost": lost})
            if lost:
                self._lose_acks -= 1
            elif not envelope.acked.is_set():
                envelope.ack_payload = payload
                envelope.acked.set()
            self._changed.notify_all()
        if lost:
            # the ack never reached Slack: the connection breaks before it is read
            self._close(link, "dropped", hard=True)

    def _mark_closed(self, link: _Link, reason: str) -> None:
        with self._changed:
            if link.closed_at is None:
                link.closed_at = time.time()
                link.close_reason = reason
            self._changed.notify_all()

    def _close(self, link: _Link, reason: str, *, hard: bool) -> None:
        self._mark_closed(link, reason)
        if hard:
            # a network failure, not a goodbye: RST the TCP connection, no close frame
            sock = link.ws.socket
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
            link.ws.close_socket()
        else:
            link.ws.close(1001, reason)

    def _live_links(self) -> list[_Link]:
        with self._lock:
            return [link for link in self._links if link.live]

    # ---- envelopes -----------------------------------------------------------------------------

    def deliver(self, kind: str, payload: dict[str, Any], *, envelope_id: str | None = None,
                retry_attempt: int | None = None, timeout: float = 10.0) -> SocketAck:
        """Send an envelope and wait for its ack (redeliveries included) up to ``timeout`` seconds.

        With ``envelope_id`` of an envelope sent before, that envelope is sent again (marked
        ``retry_attempt``), as Slack redelivers one.
        """
        if kind not in ENVELOPE_KINDS:
            raise ValueError(f"unknown envelope type {kind!r}")
        with self._changed:
            envelope = self._envelopes.get(envelope_id) if envelope_id else None
            if envelope is None:
                envelope = _Envelope(envelope_id or str(uuid.uuid4()), kind, payload,
                                     accepts_response_payload=kind != "events_api")
                self._envelopes[envelope.envelope_id] = envelope
            else:
                envelope.acked.clear()
                envelope.ack_payload = None
        self._send(envelope, retry_attempt, "forced" if retry_attempt else None, wait=min(timeout, 5.0))
        acked = envelope.acked.wait(timeout)
        return SocketAck(envelope.envelope_id, acked, envelope.ack_payload if acked else None)

    def events_api(self, event: dict[str, Any], *, timeout: float = 10.0) -> SocketAck:
        """An Events API envelope (``event_callback`` around ``event``)."""
        payload = {"type": "event_callback", "team_id": "T0AEGIS", "api_app_id": APP_ID, "event": event,
                   "event_id": f"Ev{uuid.uuid4().hex[:10].upper()}", "event_time": int(time.time())}
        return self.deliver("events_api", payload, timeout=timeout)

    def _target(self, wait: float) -> _Link | None:
        """The newest usable connection; waits up to ``wait`` seconds for one to open."""
        deadline = time.monotonic() + wait
        with self._changed:
            while True:
                usable = [link for link in self._links if link.usable]
                if usable:
                    return usable[-1]
                left = deadline - time.monotonic()
                if left <= 0 or self._stop.is_set():
                    return None
                self._changed.wait(left)

    def _send(self, envelope: _Envelope, retry_attempt: int | None, retry_reason: str | None,
              wait: float = 0.0) -> bool:
        link = self._target(wait)
        if link is None:
            return False   # no connection now: the redelivery loop sends it once one opens
        attempt = len(envelope.attempts) if retry_attempt is None else retry_attempt
        frame: dict[str, Any] = {"envelope_id": envelope.envelope_id, "type": envelope.kind,
                                 "payload": envelope.payload,
                                 "accepts_response_payload": envelope.accepts_response_payload}
        if envelope.kind == "events_api" or attempt:
            frame.update(retry_attempt=attempt, retry_reason=retry_reason or "")
        with self._lock:
            envelope.attempts.append({"retry_attempt": attempt, "retry_reason": retry_reason or "",
                                      "connection": link.id, "at": time.time()})
        try:
            link.ws.send(json.dumps(frame))
        except ConnectionClosed:
            self._mark_closed(link, "client")
        return True

    def _due(self, envelope: _Envelope, now: float) -> str | None:
        """Why this envelope must be sent again now ("timeout", "connection_lost"), or None."""
        if envelope.acked.is_set() or envelope.gave_up:
            return None
        if not envelope.attempts:
            return "timeout"   # never sent: no connection was open
        last = envelope.attempts[-1]
        link = next((x for x in self._links if x.id == last["connection"]), None)
        if link is not None and not link.live:
            return "connection_lost"
        return "timeout" if now - last["at"] >= self.ack_timeout else None

    def _redeliver_loop(self) -> None:
        while not self._stop.wait(0.1):
            now = time.time()
            with self._lock:
                due = [(env, why) for env in self._envelopes.values() if (why := self._due(env, now))]
                stale = [link for link in self._links if link.usable and self.refresh_after is not None
                         and now - link.opened_at >= self.refresh_after]
            for envelope, why in due:
                if len(envelope.attempts) > self.max_retries:
                    envelope.gave_up = True
                    log.warning("Socket Mode: envelope %s was never acked; given up", envelope.envelope_id)
                    continue
                self._send(envelope, None, why)
            for link in stale:
                self._send_refresh(link)
            self._close_refreshed()

    # ---- disconnects -----------------------------------------------------------------------------

    def _send_refresh(self, link: _Link) -> None:
        with self._lock:
            if link.refresh_sent_at is not None or not link.live:
                return
            link.refresh_sent_at = time.time()
        try:
            link.ws.send(json.dumps({"type": "disconnect", "reason": "refresh_requested",
                                     "debug_info": {"host": f"applink-emulator-{self.port}"}}))
        except ConnectionClosed:
            self._mark_closed(link, "client")

    def _close_refreshed(self, grace: float = 10.0) -> None:
        # Slack closes a connection it asked to go away a little later, if the client has not
        for link in self._live_links():
            if link.refresh_sent_at is not None and time.time() - link.refresh_sent_at >= grace:
                self._close(link, "refreshed", hard=False)

    def refresh(self) -> list[str]:
        """``disconnect`` / ``refresh_requested`` to every live connection; their ids."""
        links = [link for link in self._live_links() if link.refresh_sent_at is None]
        for link in links:
            self._send_refresh(link)
        return [link.id for link in links]

    def drop(self, *, hard: bool = True) -> list[str]:
        """Break every live connection (``hard``: a TCP reset, no close frame); their ids."""
        links = self._live_links()
        for link in links:
            self._close(link, "dropped", hard=hard)
        return [link.id for link in links]

    def lose_next_acks(self, count: int = 1) -> None:
        """The next ``count`` acks never arrive: each breaks its connection as it is sent."""
        with self._lock:
            self._lose_acks += count

    # ---- inspection ------------------------------------------------------------------------------

    def connections(self) -> list[dict[str, Any]]:
        with self._lock:
            return [link.record() for link in self._links]

    def envelopes(self) -> list[dict[str, Any]]:
        with self._lock:
            return [envelope.record() for envelope in self._envelopes.values()]

    def wait_for_connection(self, after: int, timeout: float = 30.0) -> dict[str, Any]:
        """Wait until more than ``after`` connections were ever opened and the newest is usable."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not (len(self._links) > after and self._links[-1].usable):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no new Socket Mode connection after {after} within {timeout}s")
                self._changed.wait(left)
            return self._links[-1].record()


def create_socket_control_blueprint(server: SocketModeServer) -> Blueprint:
    """``/_emulator/socket/*``: the record and the levers (drop, refresh, lose acks, events)."""
    bp = Blueprint("emulator_socket", __name__, url_prefix="/_emulator/socket")

    @bp.get("/connections")
    def connections() -> Any:
        return jsonify(server.connections())

    @bp.get("/envelopes")
    def envelopes() -> Any:
        return jsonify(server.envelopes())

    @bp.post("/drop")
    def drop() -> Any:
        graceful = str(request.args.get("graceful", "")).lower() in ("1", "true")
        return jsonify({"ok": True, "dropped": server.drop(hard=not graceful)})

    @bp.post("/refresh")
    def refresh() -> Any:
        return jsonify({"ok": True, "refreshed": server.refresh()})

    @bp.post("/lose-acks")
    def lose_acks() -> Any:
        body = request.get_json(silent=True) or {}
        server.lose_next_acks(int(body.get("count", 1)))
        return jsonify({"ok": True})

    @bp.post("/events")
    def events() -> Any:
        event = request.get_json(silent=True)
        if not isinstance(event, dict) or not event.get("type"):
            return jsonify({"ok": False, "error": "expected an event object with a type"}), 400
        ack = server.events_api(event)
        return jsonify({"ok": True, "envelope_id": ack.envelope_id, "acked": ack.acked})

    return bp
