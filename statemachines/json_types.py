"""The one name for a JSON object, so the Any it holds is spelled — and justified — once.

JSON crosses into Aegis from untyped places: Slack payloads (slack_bolt hands them over as plain
dicts), the database's JSON columns (SQLAlchemy returns whatever was stored), the outbox payloads,
step outputs and evidence, YAML configuration and the backup dump lines. Their values are any JSON
value, nested to any depth, and the code reads them by key; a precise recursive JSON type would
make every read a cast, so the values stay ``Any`` — here and nowhere else.
"""
from __future__ import annotations

from typing import Any

JsonObject = dict[str, Any]
