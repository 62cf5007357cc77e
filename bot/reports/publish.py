"""A finished drill's report: its page stored in every backup target, and the link its result post carries.

Best effort: the drill's outcome stands whatever happens here. What happened is recorded as one more
step on the drill's row (``store report in the backup targets``: which targets hold
``reports/<drill id>.html``, which failed and why), so the report page itself shows it.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime

from bot.backup_wiring import BackupSetupError, targets_from
from bot.config import Config
from bot.reports.pages import drill_html
from bot.reports.web import ReportLinks, ReportsApp
from recovery.drills import runs
from recovery.redact import redact
from statemachines.store import Store

log = logging.getLogger("aegis.reports")
STEP_NAME = "store report in the backup targets"


def report_key(run_id: int) -> str:
    return f"reports/{run_id}.html"


def store_in_targets(store: Store, config: Config, run_id: int) -> dict[str, str | None]:
    """Upload the drill's page to every target; {target name: None when stored, else the error}."""
    html = drill_html(store, config, run_id, ReportsApp.href_for(None))
    if html is None:
        return {}
    data = html.encode("utf-8")
    try:
        targets = targets_from(config)
    except BackupSetupError as exc:
        return {"(none)": str(exc)}
    outcome: dict[str, str | None] = {}
    for target in targets:
        try:
            writer = target.open_writer(report_key(run_id))
            try:
                writer.write(data)
                writer.commit()
            except BaseException:
                writer.abort()
                raise
            outcome[target.name] = None
        except Exception as exc:
            outcome[target.name] = redact(f"{type(exc).__name__}: {exc}")[:300]
            log.warning("drill %s: the report could not be stored on %s: %s", run_id, target.name, outcome[target.name])
    return outcome


def publish_drill(store: Store, config: Config, links: ReportLinks | None, run_id: int) -> str | None:
    """Store the report in the targets (recorded as a step), then a fresh link to its page (or None)."""
    began, started = time.monotonic(), datetime.now(UTC)
    try:
        outcome = store_in_targets(store, config, run_id)
    except Exception as exc:       # rendering or config trouble: the drill's result still gets posted
        log.exception("drill %s: its report could not be stored", run_id)
        outcome = {"(report)": redact(f"{type(exc).__name__}: {exc}")[:300]}
    key = report_key(run_id)
    stored = [name for name, error in outcome.items() if error is None]
    failed = [f"{name}: {error}" for name, error in outcome.items() if error is not None]
    detail = "; ".join([*([f"{key} on {', '.join(stored)}"] if stored else []), *failed])
    runs.add_step(store, run_id, {"name": STEP_NAME, "ok": bool(stored) and not failed, "detail": detail[:600],
                                  "started_at": started.isoformat(), "finished_at": datetime.now(UTC).isoformat(),
                                  "seconds": round(time.monotonic() - began, 3)})
    made = links.link(f"drill-{run_id}", f"drills/{run_id}") if links is not None else None
    return made[0] if made else None
