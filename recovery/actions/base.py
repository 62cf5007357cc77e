"""The contract every recovery action follows (DESIGN.md, "Actions and the ledger").

An action is a small object built from config for one plan step. The engine calls, in order,
``precheck`` → ``execute`` → ``verify``; after a crash it calls ``is_done`` on a step whose ledger
row was left ``running`` to decide between "mark succeeded" and "ask for approval again".
Actions never know they are driven from chat: they get a ``progress`` callback for human-readable
progress lines and return plain JSON-able output.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

Progress = Callable[[str], None]


class ActionError(Exception):
    """A step failed in a way a responder can act on; the message is safe to show in Slack."""


class Action(ABC):
    #: short machine name, e.g. ``postgres_promote``; recorded in the ledger
    kind: str = "action"
    #: True when the action changes a system (needs an authorised approval before it runs)
    destructive: bool = True

    @abstractmethod
    def describe(self) -> str:
        """One line saying what will happen, for the plan message."""

    def precheck(self) -> None:
        """Raise ActionError when the action cannot run now (e.g. target unreachable)."""

    @abstractmethod
    def execute(self, progress: Progress) -> dict[str, Any]:
        """Do the work; return JSON-able output for the ledger. Raise ActionError on failure."""

    def verify(self) -> None:
        """Raise ActionError when the effect of ``execute`` cannot be observed."""

    def rollback(self) -> None:
        """Undo what can be undone; the default is that nothing can."""

    def is_done(self) -> bool | None:
        """After a crash: True = the effect is in place, False = it is not, None = cannot tell."""
        return None
