"""Start (or restart) one application service after a recovery, then wait until it is healthy.

The step's ``{"service": name, "hook": "start"|"restart"}`` names the service's ``start`` or
``restart`` hook in the config; the hook runs through :class:`recovery.actions.hook.HookAction`
(minimal environment, timeout, redacted output). Then the service's configured health check
(``recovery.health``) is probed until it passes or ``health_timeout`` runs out; every probe's
result is not kept, only the last, as the step's evidence.

Decided here: a service without a health check succeeds on its hook's exit code, and its evidence
says that nothing was probed (the verification step at the end of the plan still checks every
service that has one). After a crash, ``is_done`` trusts a passing health check (the service is up,
whichever run started it) and otherwise the hook's own ``done_check``.
"""

from __future__ import annotations

import time

from recovery.actions.base import Action, ActionError, Progress, evidence
from recovery.actions.hook import HookAction
from recovery.health import CheckResult, HealthSpec, run_check
from statemachines.json_types import JsonObject


class ServiceStart(Action):
    kind = "service_start"
    destructive = True

    def __init__(self, service: str, hook: HookAction, health: HealthSpec | None, *,
                 health_timeout: float = 60.0, poll: float = 0.5) -> None:
        self.service = service
        self.hook = hook
        self.health = health
        self.health_timeout = float(health_timeout)
        self.poll = poll

    def describe(self) -> str:
        probe = f", then wait for its {self.health.kind} health check" if self.health else ""
        return f"Start service {self.service} ({self.hook.describe()}){probe}"

    def execute(self, progress: Progress) -> JsonObject:
        progress(f"{self.service}: {self.hook.describe()}")
        ran = self.hook.execute(progress)
        if self.health is None:
            observed = evidence(f"{self.service} health", "not probed: no health check is configured",
                                "a configured health check", True)
            return {"service": self.service, "hook_exit_code": ran.get("exit_code"), "healthy": None,
                    "evidence": [observed]}
        result = self._wait_healthy()
        observed = evidence(f"{self.service} health ({result.kind})", result.detail, "healthy", result.ok)
        if not result.ok:
            raise ActionError(f"{self.service} started but is not healthy after {self.health_timeout:g}s: "
                              f"{result.detail}")
        progress(f"{self.service} is healthy: {result.detail}")
        return {"service": self.service, "hook_exit_code": ran.get("exit_code"), "healthy": True,
                "latency_ms": result.latency_ms, "evidence": [observed]}

    def _wait_healthy(self) -> CheckResult:
        assert self.health is not None
        deadline = time.monotonic() + self.health_timeout
        while True:
            result = run_check(self.health)
            if result.ok or time.monotonic() > deadline:
                return result
            time.sleep(self.poll)

    def is_done(self) -> bool | None:
        if self.health is not None and run_check(self.health).ok:
            return True
        return self.hook.is_done()
