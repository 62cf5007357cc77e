"""The emulator as one Flask app, and a server that runs it under waitress in a background thread.

``aegis serve`` starts it when no Slack credentials are configured; the end-to-end tests start
one per session. For manual use::

    SLACK_SIGNING_SECRET=… SLACK_BOT_TOKEN=xoxb-… python -m slack_emulator.server --port 3001 \\
        --bot-url http://127.0.0.1:3000
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
from pathlib import Path

from flask import Flask

from slack_emulator.control import create_control_blueprint
from slack_emulator.driver import SlackDriver
from slack_emulator.network import is_loopback
from slack_emulator.state import EmulatorState
from slack_emulator.ui import create_ui_blueprint
from slack_emulator.webapi import create_webapi_blueprint
from slack_emulator.wsgi_thread import BackgroundWSGIServer

log = logging.getLogger(__name__)


def create_emulator_app(state: EmulatorState, bot_url: str, signing_secret: str, bot_token: str, *,
                        driver: SlackDriver | None = None) -> Flask:
    """The Web API (/api/*), the test hooks (/_emulator/*) and the page (/)."""
    app = Flask(__name__, template_folder=str(Path(__file__).parent / "templates"))
    app.json.sort_keys = False  # type: ignore[attr-defined]  # keep Slack's field order in inspection output
    driver = driver or SlackDriver(bot_url, signing_secret, state, None)
    app.register_blueprint(create_webapi_blueprint(state, bot_token))
    app.register_blueprint(create_control_blueprint(state))
    app.register_blueprint(create_ui_blueprint(state, driver))
    return app


class EmulatorServer:
    """The emulator on its own server. Loopback only: whoever reaches its page can act as any user and
    press Approve, so it refuses (ValueError) any host that is not a loopback address."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, bot_url: str = "", signing_secret: str = "",
                 bot_token: str = "", *, state: EmulatorState | None = None,
                 database_path: str | None = None) -> None:
        if not is_loopback(host):
            raise ValueError(f"the Slack emulator listens on loopback only, not on {host!r}")
        # database_path: keep the workspace in this SQLite file across restarts (None: in memory)
        self.state = state or EmulatorState(database_path)
        self.driver = SlackDriver(bot_url, signing_secret, self.state, None)
        self.app = create_emulator_app(self.state, bot_url, signing_secret, bot_token, driver=self.driver)
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
        self._http.start()
        # response_urls must carry the real port, which port 0 only reveals once bound.
        self.driver.emulator_url = self.url
        log.info("Slack emulator listening on %s", self.url)
        return self

    def stop(self) -> None:
        self.state.stop_waiters()   # waiting long-polls answer now instead of holding up the shutdown
        self._http.stop()
        self.state.close()

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
    args = parser.parse_args(argv)
    if not is_loopback(args.host):
        parser.error(f"--host {args.host!r}: the emulator lets anyone act as any user, so it listens on loopback only")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    secret, token = os.environ.get("SLACK_SIGNING_SECRET", ""), os.environ.get("SLACK_BOT_TOKEN", "")
    if not secret or not token:
        parser.error("set SLACK_SIGNING_SECRET and SLACK_BOT_TOKEN to the values the bot uses")
    server = EmulatorServer(args.host, args.port, args.bot_url, secret, token).start()
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
