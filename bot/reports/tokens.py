"""Signed, expiring report links: ``<expiry>.<subject>.<signature>``.

The signature is HMAC-SHA256 over ``aegis-reports/v1``, the expiry (POSIX seconds) and the subject
(who the link was made for: a Slack user id or ``drill-7``), with a secret of the reports' own —
never the Slack signing secret, so that a leaked report link or secret grants nothing in Slack and
the other way round. Checked in constant time; an expired link is told apart from a forged one only
after its signature is good.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
from datetime import UTC, datetime, timedelta

_TOKEN = re.compile(r"^([0-9]{1,12})\.([A-Za-z0-9_-]{0,64})\.([A-Za-z0-9_-]{43})$")
_SUBJECT = re.compile(r"[^A-Za-z0-9_-]")
MIN_SECRET_CHARS = 16


class ReportSecretError(ValueError):
    """The configured reports secret cannot be used (too short, or the Slack signing secret)."""


class LinkSigner:
    def __init__(self, secret: bytes, ttl: timedelta) -> None:
        if len(secret) < MIN_SECRET_CHARS:
            raise ReportSecretError(f"the reports secret must be at least {MIN_SECRET_CHARS} characters")
        self._secret = secret
        self.ttl = ttl
        # the env var that was unset when the secret is this process's own random one (warned once serving)
        self.ephemeral_because: str | None = None

    def _sign(self, expires: int, subject: str) -> str:
        mac = hmac.new(self._secret, f"aegis-reports/v1\n{expires}\n{subject}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()

    def token(self, subject: str, now: datetime | None = None) -> tuple[str, datetime]:
        """A fresh token for ``subject`` and when it expires."""
        subject = _SUBJECT.sub("", subject)[:64]
        expires_at = (now or datetime.now(UTC)) + self.ttl
        expires = int(expires_at.timestamp())
        return f"{expires}.{subject}.{self._sign(expires, subject)}", datetime.fromtimestamp(expires, UTC)

    def check(self, token: str, now: datetime | None = None) -> str:
        """``ok``, ``expired`` (signed by us, too old) or ``bad`` (malformed or not signed by us)."""
        found = _TOKEN.match(token or "")
        if not found:
            return "bad"
        expires, subject, signature = int(found.group(1)), found.group(2), found.group(3)
        if not hmac.compare_digest(self._sign(expires, subject), signature):
            return "bad"
        if expires <= (now or datetime.now(UTC)).timestamp():
            return "expired"
        return "ok"


def signer_from_env(secret_env: str, ttl: timedelta, *, slack_signing_secret: str | None) -> LinkSigner:
    """The signer of this process: the secret in ``secret_env``; without one, a random secret (links
    then work on this process only, until it restarts; ``ReportDesk.serving_at`` warns once the server
    is bound, so a start that fails still ends in its one line)."""
    value = os.environ.get(secret_env, "")
    if not value:
        signer = LinkSigner(secrets.token_bytes(32), ttl)
        signer.ephemeral_because = secret_env
        return signer

    if slack_signing_secret and hmac.compare_digest(value.encode(), slack_signing_secret.encode()):
        raise ReportSecretError(f"{secret_env} must not be the Slack signing secret: give the reports their own")
    return LinkSigner(value.encode(), ttl)
