"""The demo's ``orders-api``: a tiny HTTP service that reads its orders from the database it points at.

It points at the demo primary until the plan's "repoint traffic" step (the demo's ``update_traffic``
hook) writes ``standby`` into its target file; it reads that file on every request, as a service
would re-read its connection settings. ``GET /healthz`` is the demo config's health check for
``orders-api`` (200 while the orders can be read, 503 otherwise), ``GET /`` a page showing what it
reads, with a button that stops the primary — the failure the demo recovers from.
"""

from __future__ import annotations

import html
import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from string import Template

import psycopg

from statemachines.json_types import JsonObject

log = logging.getLogger("aegis.demo")


def _read_orders(dsn: str) -> tuple[int, bool]:
    """(number of orders, whether the node is still a read-only standby)."""
    with psycopg.connect(dsn, autocommit=True, connect_timeout=2) as conn:
        conn.execute("SET statement_timeout = 2000")
        row = conn.execute("SELECT (SELECT count(*) FROM demo_orders), pg_is_in_recovery()").fetchone()
    assert row is not None
    return int(row[0]), bool(row[1])


class SampleService:
    def __init__(self, nodes: dict[str, str], target_file: Path, stop_primary: Callable[[], None]) -> None:
        self.nodes = nodes                # node name -> DSN
        self.target_file = target_file
        self.stop_primary = stop_primary
        self._server: ThreadingHTTPServer | None = None
        self.target_file.write_text("primary\n", encoding="utf-8")

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.server_address[1])

    def target(self) -> str:
        try:
            name = self.target_file.read_text(encoding="utf-8").strip()
        except OSError:
            name = "primary"
        return name if name in self.nodes else "primary"

    def status(self) -> tuple[int, JsonObject]:
        node = self.target()
        try:
            orders, read_only = _read_orders(self.nodes[node])
        except psycopg.Error as exc:
            reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            return 503, {"ok": False, "service": "orders-api", "reads_from": node, "error": reason}
        return 200, {"ok": True, "service": "orders-api", "reads_from": node, "orders": orders,
                     "read_only": read_only}

    def start(self) -> SampleService:
        # port 0: the kernel picks a free port while binding (no race with another process)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="aegis-demo-service", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def _page(code: int, status: JsonObject) -> str:
    template = Template(resources.files("bot.demo").joinpath("service_page.html").read_text(encoding="utf-8"))
    state = (f"reads {status['orders']} orders from the demo {status['reads_from']}" if code == 200
             else f"cannot read its orders from the demo {status['reads_from']}: {status['error']}")
    return template.substitute(state=html.escape(state), healthy="ok" if code == 200 else "failing")


def _handler(service: SampleService) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:   # noqa: A002 - the base class's name
            log.debug("orders-api: " + format, *args)

        def _send(self, code: int, body: str, content_type: str) -> None:
            data = body.encode("utf-8")
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:   # noqa: N802 - http.server's name
            code, status = service.status()
            if self.path == "/healthz":
                self._send(code, json.dumps(status), "application/json")
            elif self.path == "/":
                self._send(200, _page(code, status), "text/html; charset=utf-8")
            else:
                self._send(404, json.dumps({"ok": False, "error": "not found"}), "application/json")

        def do_POST(self) -> None:   # noqa: N802 - http.server's name
            if self.path != "/stop-primary":
                self._send(404, json.dumps({"ok": False, "error": "not found"}), "application/json")
                return
            log.warning("demo: stopping the demo primary (immediate), as asked on the orders-api page")
            service.stop_primary()
            self.send_response(303)
            self.send_header("Location", "/")
            self.send_header("Content-Length", "0")
            self.end_headers()

    return Handler
