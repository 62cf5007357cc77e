"""``GET /reports/…``: the read-only report pages, never open.

Access (checked before anything is read from the store):
- ``?token=…``: a signed, expiring link (bot/reports/tokens.py) from ``/aegis report`` or a drill's
  result post. Missing, forged or expired → 403 with a one-line page saying how to get a new link
  (when basic auth is configured, a request with no credentials at all gets 401 and the browser's
  login prompt instead).
- ``Authorization: Basic …`` when ``reports.basic_auth_user`` is configured: user and password
  (from the variable ``reports.basic_auth_password_env`` names) compared in constant time; wrong → 401.

Routes: ``/reports/`` (overview; ``&month=YYYY-MM`` for another month's availability) and
``/reports/drills/<id>``. Pages link each other with the
viewer's token kept on the link. Responses are ``no-store``, send no referrer, and forbid scripts,
frames and every outside resource (the charts are inline SVG).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import os
import re
from collections.abc import Callable, Iterable
from datetime import datetime
from urllib.parse import parse_qs, quote
from wsgiref.types import StartResponse, WSGIEnvironment

from bot.config import Config
from bot.reports.pages import drill_html, overview_html
from bot.reports.tokens import LinkSigner
from messages import report_pages
from statemachines.store import Store

log = logging.getLogger("aegis.reports")
PREFIX = "/reports"
_DRILL = re.compile(r"^/drills/([0-9]{1,12})$")
SECURITY_HEADERS = [
    ("Cache-Control", "no-store"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
                                "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"),
]


def is_reports_path(path: str) -> bool:
    return path == PREFIX or path.startswith(PREFIX + "/")


class BasicAuth:
    def __init__(self, user: str, password_env: str) -> None:
        self.user, self.password_env = user, password_env

    def check(self, header: str) -> bool:
        password = os.environ.get(self.password_env, "")
        if not password or not header.startswith("Basic "):
            return False
        try:
            given = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False
        user, sep, secret = given.partition(":")
        # both compared, always: the time does not tell which one was wrong
        user_ok = hmac.compare_digest(user.encode(), self.user.encode())
        password_ok = hmac.compare_digest(secret.encode(), password.encode())
        return bool(sep) and user_ok and password_ok


class ReportsApp:
    """The WSGI app mounted at ``/reports``."""

    def __init__(self, store: Store, config: Config, signer: LinkSigner) -> None:
        self.store, self.config, self.signer = store, config, signer
        reports = config.reports
        self.basic = (BasicAuth(reports.basic_auth_user, reports.basic_auth_password_env)
                      if reports.basic_auth_user and reports.basic_auth_password_env else None)

    def _answer(self, start_response: StartResponse, status: str, html: str,
                extra: list[tuple[str, str]] | None = None) -> list[bytes]:
        body = html.encode("utf-8")
        start_response(status, [("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(body))),
                                *SECURITY_HEADERS, *(extra or [])])
        return [body]

    def _denied(self, start_response: StartResponse, reason: str) -> list[bytes]:
        html = report_pages.denied(self.config.locale, reason)
        if reason in ("missing", "password") and self.basic is not None:
            return self._answer(start_response, "401 Unauthorized", html,
                                [("WWW-Authenticate", 'Basic realm="Aegis reports", charset="UTF-8"')])
        return self._answer(start_response, "403 Forbidden", html)

    def authorise(self, environ: WSGIEnvironment) -> tuple[str, str | None]:
        """(``ok`` or why not, the token to keep on links)."""
        header = str(environ.get("HTTP_AUTHORIZATION", ""))
        if header and self.basic is not None:
            return ("ok" if self.basic.check(header) else "password"), None
        tokens = parse_qs(str(environ.get("QUERY_STRING", ""))).get("token") or []
        if not tokens:
            return "missing", None
        verdict = self.signer.check(tokens[0])
        return verdict, tokens[0] if verdict == "ok" else None

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        if method not in ("GET", "HEAD"):
            start_response("405 Method Not Allowed", [("Allow", "GET, HEAD"), ("Content-Length", "0")])
            return [b""]
        verdict, token = self.authorise(environ)
        if verdict != "ok":
            return self._denied(start_response, verdict)
        href = self.href_for(token)
        path = str(environ.get("PATH_INFO", ""))[len(PREFIX):]
        try:
            if path in ("", "/"):
                months = parse_qs(str(environ.get("QUERY_STRING", ""))).get("month")
                month = months[0] if months else None
                return self._answer(start_response, "200 OK", overview_html(self.store, self.config, href,
                                                                            month=month))
            found = _DRILL.match(path)
            page = drill_html(self.store, self.config, int(found.group(1)), href) if found else None
        except Exception:
            log.exception("could not render the report page %s", path)
            start_response("500 Internal Server Error", [("Content-Type", "text/plain; charset=utf-8"),
                                                         *SECURITY_HEADERS])
            return [b"the report could not be rendered; the log has the reason"]
        if page is None:
            return self._answer(start_response, "404 Not Found", report_pages.not_found(self.config.locale, href))
        return self._answer(start_response, "200 OK", page)

    @staticmethod
    def href_for(token: str | None) -> Callable[[str], str]:
        """Links between the pages, relative to /reports/, with the viewer's token kept."""
        suffix = f"?token={quote(token, safe='')}" if token else ""
        return lambda path: f"{PREFIX}/{path}{suffix}"


class ReportLinks:
    """Fresh signed links to the pages. ``base_url``: ``reports.base_url``, else (``aegis serve``) the
    address the HTTP server bound; None (a CLI run without one): no link can be made."""

    def __init__(self, signer: LinkSigner, base_url: str | None) -> None:
        self.signer, self.base_url = signer, base_url

    def link(self, subject: str, path: str = "") -> tuple[str, datetime] | None:
        if not self.base_url:
            return None
        token, expires_at = self.signer.token(subject)
        return f"{self.base_url.rstrip('/')}{PREFIX}/{path}?token={quote(token, safe='')}", expires_at
