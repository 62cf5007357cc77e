"""The drill's report file (D2: "the result carries the report's location").

A JSON document per run under ``drills.report_dir`` — the steps with timings, the figures with their
basis, pass/fail per objective — that the report pages render; its path is ``drill_run.report_path``.
"""

from __future__ import annotations

import json
from pathlib import Path

from statemachines.json_types import JsonObject
from statemachines.models import DrillRun


def _jsonable(value: object) -> object:
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def write_report(report_dir: Path, run: DrillRun, status: str, figures: JsonObject,
                 objectives: list[JsonObject], error: str) -> Path:
    report_dir.mkdir(parents=True, exist_ok=True)
    path = report_dir / f"drill-{run.id}-{run.name}.json"
    document = {"id": run.id, "name": run.name, "trigger": run.trigger, "requested_by": run.requested_by,
                "scenario": run.scenario, "status": status, "started_at": run.started_at,
                "steps": run.steps, "figures": figures, "objectives": objectives, "error": error}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(document, indent=2, default=_jsonable), encoding="utf-8")
    tmp.replace(path)
    return path
