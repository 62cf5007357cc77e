"""The emulator as one Flask app, and a server that runs it under waitress in a background thread.

``aegis serve`` starts it when no Slack credentials are configured; the end-to-end tests start
one per session. For manual use::

    SLACK_SIGNING_SECRET=… SLACK_BOT_TOKEN=xoxb-… python -m slack_emulator.server --port 3001 \\
        --bot-url http://127.0.0.1:3000

With ``--socket-mode`` (``SLACK_APP_TOKEN`` names the app-level token it accepts) the workspace talks
to the bot over Socket Mode instead (slack_emulator/socket_mode.py): no bot URL is needed.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from flask import Flask

from slack_emulator.control import create_control_blueprint
from slack_emulator.driver import SlackDriver
from slack_emulator.network import is_loopback
from slack_emulator.state import EmulatorState
from slack_emulator.ui import create_ui_blueprint
from slack_emulator.webapi import create_webapi_blueprint
from slack_emulator.wsgi_thread import BackgroundWSGIServer

if TYPE_CHECKING:   # imported only in Socket Mode (it needs the websockets library)
    from slack_emulator.socket_mode import SocketModeServer

log = logging.getLogger(__name__)


def create_emulator_app(state: EmulatorState, bot_url: str, signing_secret: str, bot_token: str, *,
                        driver: SlackDriver | None = None, socket: SocketModeServer | None = None) -> Flask:
    """The Web API (/api/*), the test hooks (/_emulator/*) and the page (/); with ``socket``, also
    ``apps.connections.open`` and the Socket Mode levers (/_emulator/socket/*)."""
    app = Flask(__name__, template_folder=str(Path(__file__).parent / "templates"))
    app.json.sort_keys = False  # type: ignore[attr-defined]  # keep Slack's field order in inspection output
    driver = driver or SlackDriver(bot_url, signing_secret, state, None)
    app.register_blueprint(create_webapi_blueprint(state, bot_token,
                                                   connections_open=socket.open_url if socket else None))
    if socket is not None:
        from slack_emulator.socket_mode import create_socket_control_blueprint
        app.register_blueprint(create_socket_control_blueprint(socket))
    app.register_blueprint(create_control_blueprint(state))
    app.register_blueprint(create_ui_blueprint(state, driver))
    return app


class EmulatorServer:
    """The emulator on its own server. Loopback only: whoever reaches its page can act as any user and
    press Approve, so it refuses (ValueError) any host that is not a loopback address."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, bot_url: str = "", signing_secret: str = "",
                 bot_token: str = "", *, state: EmulatorState | None = None, socket_mode: bool = False,
                 app_token: str | None = None, refresh_after: float | None = None,
                 database_path: str | None = None) -> None:
        """``socket_mode``: requests reach the bot over Socket Mode (``app_token``: the one app-level
        token accepted, None for any ``xapp-``; ``refresh_after``: seconds before a connection is
        asked to reconnect)."""
        if not is_loopback(host):
            raise ValueError(f"the Slack emulator listens on loopback only, not on {host!r}")
        # database_path: keep the workspace in this SQLite file across restarts (None: in memory)
        self.state = state or EmulatorState(database_path)
        self.driver = SlackDriver(bot_url, signing_secret, self.state, None)
        self.socket: SocketModeServer | None = None
        if socket_mode:
            from slack_emulator.socket_mode import SocketModeServer
            self.socket = SocketModeServer(host, 0, app_token=app_token, refresh_after=refresh_after)
            self.driver.socket = self.socket
        self.app = create_emulator_app(self.state, bot_url, signing_secret, bot_token, driver=self.driver,
                                       socket=self.socket)
        # 16 threads: the page's long-polls may hold up to ui.MAX_WAITING_POLLS of them
        self._http = BackgroundWSGIServer(self.app, host, port, threads=16)

    @property
    def url(self) -> str:
        return self._http.url

    @property
    def api_url(self) -> str:
        """The ``base_url`` for slack_sdk's WebClient (``SLACK_API_URL``)."""
        return self.url + "/api/"

    @property
    def bot_url(self) -> str:
        return self.driver.bot_url

    @bot_url.setter
    def bot_url(self, value: str) -> None:
        # The bot usually starts after the emulator (it needs api_url), so its URL may come later.
        self.driver.bot_url = value

    def start(self) -> EmulatorServer:
        if self.socket is not None:
            self.socket.start()
        self._http.start()
        # response_urls must carry the real port, which port 0 only reveals once bound.
        self.driver.emulator_url = self.url
        log.info("Slack emulator listening on %s", self.url)
        return self

    def stop(self) -> None:
        self.state.stop_waiters()   # waiting long-polls answer now instead of holding up the shutdown
        self._http.stop()
        self.state.close()
        if self.socket is not None:
            self.socket.stop()

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the Aegis Slack emulator.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3001)
    parser.add_argument("--bot-url", default="http://127.0.0.1:3000",
                        help="where the bot serves /slack/events")
    parser.add_argument("--socket-mode", action="store_true",
                        help="reach the bot over Socket Mode (apps.connections.open + WebSocket) instead")
    args = parser.parse_args(argv)
    if not is_loopback(args.host):
        parser.error(f"--host {args.host!r}: the emulator lets anyone act as any user, so it listens on loopback only")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    secret, token = os.environ.get("SLACK_SIGNING_SECRET", ""), os.environ.get("SLACK_BOT_TOKEN", "")
    if not secret or not token:
        parser.error("set SLACK_SIGNING_SECRET and SLACK_BOT_TOKEN to the values the bot uses")
    server = EmulatorServer(args.host, args.port, args.bot_url, secret, token, socket_mode=args.socket_mode,
                            app_token=os.environ.get("SLACK_APP_TOKEN") or None).start()
    print(f"Slack emulator on {server.url} (Web API {server.api_url}); bot at {args.bot_url}", flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    try:
        done.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
