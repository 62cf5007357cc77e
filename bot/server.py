"""HTTP front door: ``POST /slack/events`` (Bolt) and ``GET /healthz``, served by waitress.

Bolt's own ``App.start()`` binds 0.0.0.0 and handles one request at a time; waitress is a real
multi-threaded WSGI server, so acks stay fast under concurrent clicks.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from typing import Any

from slack_bolt import App
from slack_bolt.adapter.wsgi import SlackRequestHandler
from waitress.server import create_server

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def make_wsgi(bolt_app: App, health: Callable[[], dict[str, Any]]) -> WSGIApp:
    slack = SlackRequestHandler(bolt_app, path="/slack/events")

    def wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path, method = environ.get("PATH_INFO", ""), environ.get("REQUEST_METHOD", "GET")
        if path == "/slack/events" and method == "POST":
            return slack(environ, start_response)
        if path == "/healthz" and method == "GET":
            report = health()
            body = json.dumps(report).encode()
            status = "200 OK" if report.get("ok") else "503 Service Unavailable"
            start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found"]

    return wsgi


class HttpServer:
    """A waitress server on its own thread; ``port=0`` picks a free port (see ``.port``)."""

    def __init__(self, app: WSGIApp, host: str = "127.0.0.1", port: int = 3000, threads: int = 32) -> None:
        self._server = create_server(app, host=host, port=port, threads=threads, ident="aegis",
                                     connection_limit=512, channel_timeout=30)
        self.host = host
        self.port = int(self._server.effective_port)  # type: ignore[union-attr]
        self._thread = threading.Thread(target=self._server.run, name="aegis-http", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> HttpServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.close()
