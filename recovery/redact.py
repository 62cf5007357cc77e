"""Keep secrets out of messages, logs and the database.

Two layers: values of environment variables whose names look secret are replaced wherever they
appear, and credential-shaped fragments (``password=…`` in a DSN, ``user:pass@`` in a URL, Slack
tokens) are masked by pattern, so that a secret not known in advance is still hidden.
"""

from __future__ import annotations

import os
import re

MASK = "********"
_SECRET_NAME = re.compile(r"(TOKEN|SECRET|PASSWORD|PASSWD|KEY|CONNECTION_STRING|CREDENTIAL)", re.I)
_PATTERNS = [
    (re.compile(r"(password\s*=\s*)('[^']*'|\S+)", re.I), r"\1" + MASK),
    (re.compile(r"(://[^:/@\s]+:)([^@\s]+)(@)"), r"\1" + MASK + r"\3"),
    (re.compile(r"xox[abposr]-[A-Za-z0-9-]+"), MASK),
    (re.compile(r"xapp-[A-Za-z0-9-]+"), MASK),
    (re.compile(r"(AccountKey=)([^;\s]+)", re.I), r"\1" + MASK),
]


def secret_values(environ: dict[str, str] | None = None) -> list[str]:
    """Values of secret-looking environment variables, longest first (so overlaps mask fully)."""
    env = os.environ if environ is None else environ
    values = {v for k, v in env.items() if _SECRET_NAME.search(k) and v and len(v) >= 6}
    return sorted(values, key=len, reverse=True)


def redact(text: str, extra_secrets: list[str] | None = None) -> str:
    """Return ``text`` with every known or credential-shaped secret masked."""
    if not text:
        return text
    for value in [*(extra_secrets or []), *secret_values()]:
        if value and value in text:
            text = text.replace(value, MASK)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text
