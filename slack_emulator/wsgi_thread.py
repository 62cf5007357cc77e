"""Serve a WSGI app with waitress on a real socket from a background thread, and stop it cleanly.

Used for the emulator and, in tests, for a Bolt app behind its WSGI adapter (Bolt's own
``App.start()`` binds 0.0.0.0 and serves one request at a time).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from waitress import wasyncore
from waitress.server import create_server


def quiet_waitress() -> None:
    # waitress writes no access log; keep its queue-depth warnings out of test output too.
    logging.getLogger("waitress").setLevel(logging.ERROR)
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)


class BackgroundWSGIServer:
    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, threads: int = 8) -> None:
        self.app = app
        self.host = host
        self.port = port
        self.threads = threads
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        if not self.port:
            raise RuntimeError("server not started")
        return f"http://{self.host}:{self.port}"

    def start(self) -> BackgroundWSGIServer:
        if self._server is not None:
            return self
        quiet_waitress()
        # port 0 asks the OS for a free port; effective_port tells which one it gave.
        self._server = create_server(self.app, host=self.host, port=self.port, threads=self.threads,
                                     clear_untrusted_proxy_headers=True)
        self.port = self._server.effective_port
        self._thread = threading.Thread(target=self._server.run, name=f"wsgi-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        # Close the sockets from inside the event loop thread; the loop ends once its map is empty.
        server.trigger.pull_trigger(lambda: wasyncore.close_all(server._map))
        if self._thread is not None:
            self._thread.join(timeout)
        server.task_dispatcher.shutdown()

    def __enter__(self) -> BackgroundWSGIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
