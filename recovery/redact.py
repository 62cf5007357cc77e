"""Keep secrets out of messages, logs and the database.

Three layers, applied by :func:`redact` to every text on its way out:

1. **Declared secrets** — the values the process registered with :func:`register_secrets`. The bot
   registers, at start, the value of every environment variable its configuration names as holding
   a secret (``bot/secrets.py`` says which: ``password_env``, ``headers_env``,
   ``connection_string_env``, ``key_env``, ``pass_env``, ``postgres_dsn_env``, …) whatever the
   variable is called: ``password_env: DB_PASS`` masks the value of ``DB_PASS``. The registry is
   process-wide and thread-safe; values shorter than :data:`MIN_SECRET_CHARS` are ignored (masking
   every "abc" would mangle ordinary text and hide nothing worth hiding).
2. **Secret-looking names** — values of environment variables whose names contain TOKEN, SECRET,
   PASSWORD, KEY, … (a safety net for secrets the configuration does not mention, such as the Slack
   credentials).
3. **Credential-shaped text** — ``password=…`` in a DSN, ``user:pass@`` in a URL, Slack tokens,
   ``AccountKey=…``: hidden even when the value was never known in advance.

Each value is also masked in its URL-encoded form (a password inside a ``postgresql://`` URL) and,
for a multi-line value (a PEM key), line by line.
Where text is masked it reads :data:`MASK`. :func:`redact_data` applies the same to every string of
a JSON-like structure (ledger output, Slack Web API arguments).

Where it is applied:

- hook output (``recovery/actions/hook.py``): every stdout line before it becomes a progress line or
  the ledger's ``stdout_tail``, the stderr line quoted in a failure, a webhook's answer and
  connection errors — with the hook's own ``pass_env`` and header values added;
- the engine (``recovery/engine.py``): step details (plan message, step result, timeline text),
  progress lines, and every string of a step's output before the ledger row is written;
- Slack (``bot/slack/gateway.py``): every Web API call's ``text``, ``blocks``, ``attachments`` and
  ``view``, as the last line of defence;
- logs (``bot/logs.py``): every formatted record;
- health check details and backup/restore/WAL errors, in their own modules.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterable
from typing import overload
from urllib.parse import quote

from statemachines.json_types import JsonObject

MASK = "********"
#: shorter values are not registered: they would mask fragments of ordinary words and numbers
MIN_SECRET_CHARS = 4
_SECRET_NAME = re.compile(r"(TOKEN|SECRET|PASSWORD|PASSWD|KEY|CONNECTION_STRING|CREDENTIAL)", re.I)
_PATTERNS = [
    (re.compile(r"(password\s*=\s*)('[^']*'|\S+)", re.I), r"\1" + MASK),
    (re.compile(r"(://[^:/@\s]+:)([^@\s]+)(@)"), r"\1" + MASK + r"\3"),
    (re.compile(r"xox[abposr]-[A-Za-z0-9-]+"), MASK),
    (re.compile(r"xapp-[A-Za-z0-9-]+"), MASK),
    (re.compile(r"(AccountKey=)([^;\s]+)", re.I), r"\1" + MASK),
]

_lock = threading.Lock()
_registered: frozenset[str] = frozenset()   # replaced whole under _lock; readers take a snapshot


def _forms(value: str) -> set[str]:
    """The value as written, URL-encoded, and each of its lines (hook output is redacted line by line)."""
    value = value.strip()
    if len(value) < MIN_SECRET_CHARS:
        return set()
    lines = {line.strip() for line in value.splitlines() if len(line.strip()) >= MIN_SECRET_CHARS}
    return {value, quote(value, safe=""), *lines}


def register_secrets(values: Iterable[str | None]) -> int:
    """Mask these values from now on, in every :func:`redact` of this process; returns how many are new."""
    global _registered
    new = set().union(*(_forms(v) for v in values if v))
    with _lock:
        added = new - _registered
        _registered = _registered | added
    return len(added)


def registered_secrets() -> frozenset[str]:
    return _registered


def forget_secrets() -> None:
    """Drop every registered value (tests that start from a clean process state)."""
    global _registered
    with _lock:
        _registered = frozenset()


def secret_values(environ: dict[str, str] | None = None) -> list[str]:
    """Values of secret-looking environment variables, longest first (so overlaps mask fully)."""
    env = os.environ if environ is None else environ
    values = {v for k, v in env.items() if _SECRET_NAME.search(k) and v and len(v) >= 6}
    return sorted(values, key=len, reverse=True)


def _known(extra_secrets: Iterable[str] | None) -> list[str]:
    """Every value to mask now, longest first: a secret that contains another is masked whole."""
    known = set(_registered).union(secret_values())
    for value in extra_secrets or ():
        known |= _forms(value) if value else set()
    return sorted(known, key=len, reverse=True)


def _apply(text: str, known: list[str]) -> str:
    for value in known:
        if value in text:
            text = text.replace(value, MASK)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def redact(text: str, extra_secrets: Iterable[str] | None = None) -> str:
    """Return ``text`` with every declared, known or credential-shaped secret masked."""
    if not text:
        return text
    return _apply(text, _known(extra_secrets))


@overload
def redact_data(data: JsonObject, *, keep: frozenset[str] = frozenset(),
                extra_secrets: Iterable[str] | None = None) -> JsonObject: ...
@overload
def redact_data(data: object, *, keep: frozenset[str] = frozenset(),
                extra_secrets: Iterable[str] | None = None) -> object: ...
def redact_data(data: object, *, keep: frozenset[str] = frozenset(),
                extra_secrets: Iterable[str] | None = None) -> object:
    """Copy of a JSON-like value with every string redacted, except values under the keys in ``keep``.

    ``keep`` protects identifiers (a button's ``value``, a ``block_id``) that must reach Slack intact.
    """
    known = _known(extra_secrets)

    def walk(node: object) -> object:
        if isinstance(node, str):
            return _apply(node, known) if node else node
        if isinstance(node, dict):
            return {k: node[k] if k in keep else walk(node[k]) for k in node}
        if isinstance(node, (list, tuple)):
            return [walk(v) for v in node]
        return node

    return walk(data)


def error_line(exc: BaseException, limit: int = 300) -> str:
    """One redacted line saying what went wrong: the error's own message (a driver error's ``message``
    without its code), else its type's name."""
    text = str(getattr(exc, "message", None) or exc).strip()
    line = redact(text).splitlines()[0][:limit] if text else ""
    return line or type(exc).__name__
