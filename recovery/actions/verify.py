"""The plan's last step: services answer their health checks and the database takes writes."""

from __future__ import annotations

from typing import Any

from recovery.actions.base import Action, ActionError, Progress
from recovery.health import HealthSpec, run_checks


class VerifyRecovery(Action):
    kind = "verify"
    destructive = False

    def __init__(self, checks: list[HealthSpec], database: Action | None = None) -> None:
        self.checks = checks
        self.database = database

    def describe(self) -> str:
        return f"check {len(self.checks)} service(s)" + (" and a database write" if self.database else "")

    def execute(self, progress: Progress) -> dict[str, Any]:
        failures: list[str] = []
        if self.database is not None:
            try:
                self.database.execute(progress)
                progress("database accepts writes")
            except ActionError as exc:
                failures.append(str(exc))
        results = run_checks(self.checks) if self.checks else []
        for result in results:
            progress(f"{result.name}: {'ok' if result.ok else 'FAILED'} — {result.detail}")
            if not result.ok:
                failures.append(f"{result.name}: {result.detail}")
        if failures:
            raise ActionError("verification failed: " + "; ".join(failures))
        return {"services_checked": len(results), "database_checked": self.database is not None}
