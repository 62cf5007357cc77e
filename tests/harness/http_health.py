"""A real HTTP health endpoint for tests: every GET answers 200 "ok"."""

from __future__ import annotations

import http.server
from typing import Any


class HealthyHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: Any) -> None:
        pass
