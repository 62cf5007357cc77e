"""A step only a human can do (call the vendor, pick the clean backup, …).

The approval click *is* the human saying "done", so ``execute`` just records that. It changes no
system itself (``destructive = False``), but it must never run without a click: ``requires_human``
tells the engine not to auto-run it the way it may auto-run read-only checks.
"""

from __future__ import annotations

from recovery.actions.base import Action, Progress
from statemachines.json_types import JsonObject


class ManualStep(Action):
    kind = "manual"
    destructive = False
    #: never auto-run: only a person's approval completes this step
    requires_human = True

    def __init__(self, instruction: str) -> None:
        self.instruction = instruction

    def describe(self) -> str:
        return f"Manual step: {self.instruction}"

    def execute(self, progress: Progress) -> JsonObject:
        progress(f"confirmed by a responder: {self.instruction}")
        return {"confirmed_by_human": True}

    def is_done(self) -> bool | None:
        # Its ledger row only reaches "running" after the confirming click.
        return True
