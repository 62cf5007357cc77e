"""Logging for the bot: one line per record, every value escaped, capped and passed through ``redact``.

Logs must not be an attack surface: a value a client sent (a command text, a header, an exception
message quoting input) could carry newlines that forge whole log lines
(``ERROR aegis.flows: FORGED step 1 approved``) or terminal escapes, and a huge value could grow
the log without limit. So the formatter escapes every control character in the message and in
the exception messages of a traceback (the traceback's own line structure stays), and cuts each
line at ``MAX_LINE`` characters. Bolt's logger that prints the body of a rejected request is
silenced; the front door (bot/slack/server.py) rejects bad requests before Bolt sees them anyway,
and logs a rejection without its body.

Two formats (``aegis serve --log-format``, ``AEGIS_LOG_FORMAT``): ``text`` (the default, one readable
line) and ``json`` for log pipelines: one JSON object per line with ``time``, ``level``, ``logger``,
``message``, ``incident`` (when the line is about one) and the structured fields the operator lines
carry (``extra={"incident": "INC-7", "fields": {...}}``, see statemachines/usecases.py); every string
value redacted and capped, non-ASCII escaped so no value can break the line.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import traceback
from datetime import UTC, datetime
from types import TracebackType

from recovery.redact import redact
from statemachines.json_types import JsonObject

MAX_LINE = 4000
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
FORMATS = ("text", "json")
# keys of a JSON line that a record's structured fields never overwrite
_JSON_KEYS = ("time", "level", "logger", "message", "incident", "exception")
# C0 and C1 control characters, DEL, and the Unicode line/paragraph separators
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape(text: str) -> str:
    """``text`` on one line: control characters as ``\\n``, ``\\r``, ``\\t`` or ``\\xNN``/``\\uNNNN``."""
    def one(match: re.Match[str]) -> str:
        char = match.group()
        if char in _NAMED:
            return _NAMED[char]
        return f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"
    return _CONTROL.sub(one, text)


def cap(line: str, limit: int = MAX_LINE) -> str:
    if len(line) <= limit:
        return line
    return f"{line[:limit]}… [{len(line) - limit} more characters cut]"


def _escape_exception_texts(te: traceback.TracebackException, seen: set[int]) -> None:
    """Escape the message (and notes) of every exception in a chain; code lines are ours."""
    if id(te) in seen:
        return
    seen.add(id(te))
    if isinstance(getattr(te, "_str", None), str):
        te._str = cap(escape(te._str))  # type: ignore[attr-defined]
    notes = getattr(te, "__notes__", None)
    if notes:
        te.__notes__ = [cap(escape(str(n))) for n in notes]
    for attr in ("msg", "text", "filename"):   # SyntaxError's fields are printed too
        value = getattr(te, attr, None)
        if isinstance(value, str):
            setattr(te, attr, escape(value))
    for nested in (te.__cause__, te.__context__, *(getattr(te, "exceptions", None) or [])):
        if nested is not None:
            _escape_exception_texts(nested, seen)


class RedactingFormatter(logging.Formatter):
    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        record.message = cap(escape(redact(record.message)))
        return cap(super().formatMessage(record))

    def formatException(self, ei: tuple[type[BaseException], BaseException, TracebackType | None]  # noqa: N802
                        | tuple[None, None, None]) -> str:
        if ei[1] is None:
            return ""
        te = traceback.TracebackException(type(ei[1]), ei[1], ei[2], compact=True)
        _escape_exception_texts(te, set())
        return "\n".join(cap(line) for line in "".join(te.format()).rstrip("\n").split("\n"))

    def formatStack(self, stack_info: str) -> str:  # noqa: N802
        return "\n".join(cap(line) for line in stack_info.split("\n"))

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class JsonFormatter(RedactingFormatter):
    """One JSON object per line: time, level, logger, message, incident and the record's fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: JsonObject = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname, "logger": record.name,
            "message": cap(redact(record.getMessage())),
        }
        incident = getattr(record, "incident", None)
        if incident:
            line["incident"] = _clean(incident)
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line.update({str(k): _clean(v) for k, v in fields.items() if str(k) not in _JSON_KEYS})
        if record.exc_info and record.exc_info[1] is not None:
            line["exception"] = redact(self.formatException(record.exc_info))
        # ensure_ascii: U+2028 and friends are escaped too, so a value never splits the line
        return json.dumps(line, ensure_ascii=True, default=str)


def _clean(value: object) -> object:
    """A structured field for a JSON line: strings redacted and capped, containers walked."""
    if isinstance(value, str):
        return cap(redact(value))
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_clean(v) for v in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    return cap(redact(str(value)))


def check_level(level: str) -> str:
    """The level name in upper case; ``ValueError`` naming the valid ones otherwise."""
    name = str(level).strip().upper()
    if name not in LEVELS:
        raise ValueError(f"unknown log level {escape(str(level))[:40]!r}; use one of {', '.join(LEVELS)}")
    return name


def check_format(name: str) -> str:
    """``text`` or ``json``; ``ValueError`` naming both otherwise."""
    value = str(name).strip().lower()
    if value not in FORMATS:
        raise ValueError(f"unknown log format {escape(str(name))[:40]!r}; use one of {', '.join(FORMATS)}")
    return value


def setup_logging(level: str = "INFO", log_format: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if check_format(log_format) == "json"
                         else RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(check_level(level))
    for noisy in ("waitress", "werkzeug", "apscheduler.executors.default", "urllib3", "transitions", "alembic",
                  "botocore", "boto3", "azure"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Bolt logs the whole body of every request that fails its signature check, at INFO. A filter,
    # because Bolt resets its loggers' level (not their filters) to the root's when it builds them.
    verification = logging.getLogger("slack_bolt.RequestVerification")
    if _drop_all not in verification.filters:
        verification.addFilter(_drop_all)
    bolt_app = logging.getLogger("slack_bolt.App")
    if _drop_token_notice not in bolt_app.filters:
        bolt_app.addFilter(_drop_token_notice)


def _drop_all(_record: logging.LogRecord) -> bool:
    return False


def _drop_token_notice(record: logging.LogRecord) -> bool:
    # Bolt warns at every start that SLACK_BOT_TOKEN is unused: the app is given its client and its
    # own authorize function (bot/slack/app.py), which is what Aegis means.
    message = str(record.msg)
    return not (message.startswith("As you gave `client` as well")
                or message.startswith("As `installation_store` or `authorize` has been used"))
