"""Logging for the bot: one line per record, every line passed through ``redact``."""

from __future__ import annotations

import logging
import sys

from recovery.redact import redact


class RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def setup_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("waitress", "werkzeug", "apscheduler.executors.default", "urllib3", "transitions", "alembic",
                  "botocore", "boto3", "azure"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
