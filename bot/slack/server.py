"""HTTP front door: ``POST /slack/events`` (Bolt) and ``GET /healthz``, served by waitress.

Bolt's own ``App.start()`` binds 0.0.0.0 and handles one request at a time; waitress is a real
multi-threaded WSGI server, so acks stay fast under concurrent clicks.

Order of checks on ``POST /slack/events`` (``SlackFrontDoor``), so that nothing a stranger sends
is parsed, logged or answered with a traceback:

1. **Authenticate the raw bytes**: the timestamp header must be a whole number of seconds within
   five minutes of now and the ``v0`` HMAC-SHA256 signature over ``v0:{ts}:{body bytes}`` with the
   configured signing secret must match (constant-time compare). Otherwise 401, and the body is
   neither decoded nor logged. There is no default secret: without one the route is not served.
2. **Parse** the authenticated body ourselves: strict UTF-8, then JSON (Events API) or a form. A
   form is an interaction exactly when it has a ``payload`` field and no ``command`` field, and the
   payload must be a JSON object. (slack-bolt 1.30 takes any form body that merely *contains* the
   text "payload" for an interaction, which dropped ``/aegis … payload errors`` and every command
   typed in ``#payload-team``.) Anything malformed gets 400 with a short text.
3. **Dispatch** a ``BoltRequest`` carrying the already-parsed body. An unexpected failure there is
   logged (without the body) and answered 400, never 500 with a traceback.

Connections: idle or slow clients are cut (``channel_timeout``) and the connection limit is far
above what a Slack app needs, with the file-descriptor limit raised to match, so a few hundred idle
sockets cannot starve ``/healthz`` or Slack's own requests.
"""

from __future__ import annotations

import gc
import hashlib
import hmac
import json
import logging
import re
import resource
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from http import HTTPStatus
from typing import NotRequired, TypedDict
from urllib.parse import parse_qsl
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from slack_bolt import App
from slack_bolt.context import BoltContext
from slack_bolt.request import BoltRequest
from slack_bolt.request.internals import build_context
from waitress.server import create_server

from statemachines.json_types import JsonObject

log = logging.getLogger("aegis.server")
WSGIApp = WSGIApplication
EVENTS_PATH = "/slack/events"
MAX_BODY_BYTES = 10 * 1024 * 1024      # Slack's payloads are far smaller; a view submission is < 1 MB
MAX_CLOCK_SKEW = 300                   # Slack's documented replay window: five minutes
_TIMESTAMP = re.compile(rb"[0-9]{1,12}")
_SIGNATURE = re.compile(rb"v0=[0-9a-f]{64}")
CONNECTION_LIMIT = 4000
CHANNEL_TIMEOUT = 15                   # seconds a connection may stay idle (or trickle) before it is cut


class BadRequest(Exception):
    """An authenticated request that cannot be understood; the text is the 400 answer."""


def _answer(start_response: StartResponse, status: str, body: bytes,
            content_type: str = "text/plain; charset=utf-8",
            headers: list[tuple[str, str]] | None = None) -> list[bytes]:
    start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(body))), *(headers or [])])
    return [body]


def _read_body(environ: WSGIEnvironment) -> bytes | None:
    """The request body, or None when it is larger than ``MAX_BODY_BYTES``."""
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    if length > MAX_BODY_BYTES:
        return None
    stream = environ["wsgi.input"]
    body = stream.read(length) if length > 0 else stream.read(MAX_BODY_BYTES + 1)
    return None if len(body) > MAX_BODY_BYTES else body


def signature_ok(secret: str, timestamp: bytes, signature: bytes, body: bytes, *, now: float | None = None) -> bool:
    """Slack's v0 request signature, checked on the raw bytes before anything is parsed."""
    if not secret or not _TIMESTAMP.fullmatch(timestamp) or not _SIGNATURE.fullmatch(signature):
        return False
    if abs((time.time() if now is None else now) - int(timestamp)) > MAX_CLOCK_SKEW:
        return False
    expected = hmac.new(secret.encode(), b"v0:" + timestamp + b":" + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(b"v0=" + expected.encode(), signature)


def parse_slack_body(raw: bytes, content_type: str) -> tuple[str, JsonObject]:
    """(decoded text, parsed body) of an authenticated request; ``BadRequest`` when malformed."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("the body is not UTF-8") from None
    if not text.strip():
        raise BadRequest("the body is empty")
    if content_type.split(";")[0].strip().lower() == "application/json" or text.lstrip().startswith("{"):
        return text, _json_object(text, "the JSON body")
    fields = dict(parse_qsl(text, keep_blank_values=True))
    if "command" in fields or "ssl_check" in fields:
        return text, fields
    if "payload" in fields:
        return text, _json_object(fields["payload"], "the payload field")
    raise BadRequest("the form is neither a slash command nor an interaction payload")


def _json_object(text: str, what: str) -> JsonObject:
    try:
        value = json.loads(text)
    except ValueError:
        raise BadRequest(f"{what} is not JSON") from None
    if not isinstance(value, dict):
        raise BadRequest(f"{what} is not a JSON object")
    return value


# Bolt's own type for request headers (a name may repeat); ours are one string each
BoltHeaders = dict[str, str | Sequence[str]]


def _bolt_request(text: str, body: JsonObject, query: str, headers: BoltHeaders) -> BoltRequest:
    """A BoltRequest with our parse of the body (Bolt would re-parse ``text`` its own way)."""
    request = BoltRequest(body="", query=query, headers=headers)
    request.raw_body = text       # Bolt checks the signature again over this; it is the same bytes
    request.body = body
    request.context = build_context(BoltContext({}), body)
    return request


def _headers(environ: WSGIEnvironment) -> BoltHeaders:
    headers: BoltHeaders = {key[5:].replace("_", "-").lower(): str(value)
                            for key, value in environ.items() if key.startswith("HTTP_")}
    if environ.get("CONTENT_TYPE"):
        headers["content-type"] = str(environ["CONTENT_TYPE"])
    return headers


class SlackFrontDoor:
    """``POST /slack/events``: authenticate, parse, then hand to Bolt (see the module docstring)."""

    def __init__(self, bolt_app: App, signing_secret: str) -> None:
        if not signing_secret:
            raise ValueError("the Slack events route needs the real signing secret")
        self.bolt = bolt_app
        self._secret = signing_secret

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        raw = _read_body(environ)
        if raw is None:
            return _answer(start_response, "413 Payload Too Large", b"request body too large")
        timestamp = str(environ.get("HTTP_X_SLACK_REQUEST_TIMESTAMP", "")).encode("latin-1", "replace")
        signature = str(environ.get("HTTP_X_SLACK_SIGNATURE", "")).encode("latin-1", "replace")
        if not signature_ok(self._secret, timestamp, signature, raw):
            # the rejection is logged, never the body: it is unauthenticated input
            log.warning("rejected a request to %s: invalid or stale signature (%d bytes, body not logged)",
                        EVENTS_PATH, len(raw))
            return _answer(start_response, "401 Unauthorized", b"invalid request signature")
        try:
            text, body = parse_slack_body(raw, str(environ.get("CONTENT_TYPE", "")))
        except BadRequest as exc:
            return _answer(start_response, "400 Bad Request", f"bad request: {exc}".encode())
        try:
            response = self.bolt.dispatch(_bolt_request(text, body, str(environ.get("QUERY_STRING", "")),
                                                        _headers(environ)))
        except Exception:
            log.exception("Bolt could not dispatch an authenticated %s request", body.get("type", "form"))
            return _answer(start_response, "400 Bad Request", b"bad request: could not be handled")
        if response.status >= 500:
            # Bolt answers 500 when a listener raised before its ack; the handler logged why. Slack
            # gets a short 400 rather than a server error it would show as "dispatch_failed".
            log.error("a %s listener failed before its ack (HTTP %d from Bolt)", body.get("type", "command"),
                      response.status)
            return _answer(start_response, "400 Bad Request", b"bad request: could not be handled")
        headers = [(name, value) for name, values in response.headers.items() for value in values
                   if name.lower() not in ("content-length", "content-type")]
        content_type = (response.headers.get("content-type") or ["text/plain; charset=utf-8"])[0]
        status = f"{response.status} {_phrase(response.status)}"
        return _answer(start_response, status, (response.body or "").encode(), content_type, headers)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


class Health(TypedDict):
    """What ``GET /healthz`` answers (as JSON); 503 unless ``ok``."""

    ok: bool
    store: str                  # "ok", or the class name of the error reaching it
    owner: NotRequired[str]     # host:pid:boot of this replica
    scheduler: NotRequired[str]  # leader | standby


def make_wsgi(bolt_app: App, health: Callable[[], Health], *, signing_secret: str | None,
              mounts: Sequence[tuple[str, WSGIApp]] = ()) -> WSGIApp:
    """The bot's WSGI app. ``signing_secret=None`` (Socket Mode): the events route is not served.

    ``mounts``: (path, app) of the read-only routes with their own access rules (``/metrics``,
    ``/reports`` and everything under it: bot/metrics.py, bot/reports/web.py).
    """
    slack = SlackFrontDoor(bolt_app, signing_secret) if signing_secret else None

    def mounted(path: str) -> WSGIApp | None:
        return next((app for prefix, app in mounts if path == prefix or path.startswith(prefix + "/")), None)

    def wsgi(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path, method = environ.get("PATH_INFO", ""), environ.get("REQUEST_METHOD", "GET")
        if path == EVENTS_PATH and method == "POST" and slack is not None:
            return slack(environ, start_response)
        if path == "/healthz" and method == "GET":
            report = health()
            status = "200 OK" if report.get("ok") else "503 Service Unavailable"
            return _answer(start_response, status, json.dumps(report).encode(), "application/json")
        app = mounted(path)
        if app is not None:
            return app(environ, start_response)
        return _answer(start_response, "404 Not Found", b"not found")

    return wsgi


def raise_open_file_limit(wanted: int) -> int:
    """Raise the soft RLIMIT_NOFILE towards ``wanted`` (never above the hard limit); the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            log.warning("could not raise the open-file limit from %d to %d", soft, target)
    return int(soft)


def freeze_heap() -> None:
    """Collect once, then exempt every object alive now (modules, config, templates, the app) from
    the cyclic garbage collector: a full collection otherwise walks all of them, and in ``aegis
    serve`` such a pause (60–90 ms) stalled every request in flight at that moment — the click
    tail at 50 concurrent. Objects made later (requests) are collected as usual."""
    gc.collect()
    gc.freeze()


class HttpServer:
    """A waitress server on its own thread; ``port=0`` picks a free port (see ``.port``)."""

    def __init__(self, app: WSGIApp, host: str = "127.0.0.1", port: int = 3000, threads: int = 32, *,
                 channel_timeout: float = CHANNEL_TIMEOUT) -> None:
        # Each connection is a file descriptor; keep room for the database, Slack calls and hooks.
        files = raise_open_file_limit(CONNECTION_LIMIT + 1024)
        limit = max(100, min(CONNECTION_LIMIT, files - 512))
        self._server = create_server(app, host=host, port=port, threads=threads, ident="aegis",
                                     connection_limit=limit, channel_timeout=channel_timeout,
                                     cleanup_interval=min(2, channel_timeout), max_request_body_size=MAX_BODY_BYTES + 1,
                                     clear_untrusted_proxy_headers=True)
        self.host = host
        self.port = int(self._server.effective_port)
        self._thread = threading.Thread(target=self._server.run, name="aegis-http", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> HttpServer:
        freeze_heap()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.close()
