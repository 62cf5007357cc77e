"""The contract every recovery action follows (DESIGN.md, "Actions and the ledger").

An action is a small object built from config for one plan step. The engine calls, in order,
``precheck`` → ``execute`` → ``verify``; after a crash it calls ``is_done`` on a step whose ledger
row was left ``running`` to decide between "mark succeeded" and "ask for approval again".

Ahead of the approval (optional): while a step waits for its approval, a bot-side component
(``bot/prepare_ahead.py``) may call ``prepare`` in the background to do the step's *non-destructive*
preparation (an in-place restore streams and verifies its backup into a staging directory), so that
the approval → done time is only the part that has to wait for the approval. ``prepare`` never changes
the system the step acts on, is safe to call again (already prepared → nothing to do) and safe to
abandon (a crash leaves what the action's own precheck removes or reuses); ``precheck`` must still
re-check what can have changed since. When the step will not run any more (a new plan revision, a
rejection, an abort, the incident closed) the component calls ``withdraw`` to remove what ``prepare``
left. Both default to doing nothing.
Undoing a change is the action's own job, inside ``execute``: only the action knows how far it got
(an in-place restore puts the saved data directory back, a partial restore's swap is one transaction,
a Neo4j restore re-imports its fresh export, a Milvus restore renames the collection back); it then
raises ``RolledBack``. The engine never undoes a step after ``execute`` returned: by then the change is
in production and may already be in use (writes to a restored table), so a later failing check fails
the step (Retry/Abort) or, for a verification step, sends the incident back to ``assessed``.
Actions never know they are driven from chat: they get a ``progress`` callback for human-readable
progress lines and return plain JSON-able output.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

from statemachines.json_types import JsonObject

Progress = Callable[[str], None]


class ActionError(Exception):
    """A step failed in a way a responder can act on; the message is safe to show in Slack."""


Evidence = JsonObject   # {"check": …, "observed": …, "expected": …, "ok": bool}


def evidence(check: str, observed: str, expected: str, ok: bool) -> Evidence:
    """One observation of a verification: what was checked, the value seen, what was wanted."""
    return {"check": check, "observed": observed, "expected": expected, "ok": bool(ok)}


class VerificationFailed(ActionError):
    """A verification whose checks ran but did not all pass; ``evidence`` says which and why."""

    def __init__(self, message: str, observations: list[Evidence]) -> None:
        super().__init__(message)
        self.evidence = observations


class RolledBack(ActionError):
    """The step failed after changing a system, and undid the change: the system is as it was before
    the step (e.g. an in-place restore put the saved data back). The engine sends the incident back to
    ``assessed`` with this reason, as for a failed verification: the plan's premise no longer holds.

    Raised only after a rollback that worked; a refusal before anything changed is a plain
    ``ActionError`` (Retry/Abort), and so is a rollback that failed (the system is *not* as it was).
    ``evidence`` holds the checks of a verification that failed (if that was the reason); ``aside``
    what the failed attempt left behind for the clean-up step (``[{"kind", "location", "component"}]``,
    e.g. the failed restore kept for diagnosis): the engine puts both on the failed step."""

    def __init__(self, message: str, *, evidence: list[Evidence] | None = None,
                 aside: list[JsonObject] | None = None) -> None:
        super().__init__(message)
        self.evidence = list(evidence or [])
        self.aside = list(aside or [])


class NeedsHuman(Exception):  # noqa: N818 (not an error: a hand-over)
    """The action cannot decide by itself (nothing automated is configured): a person must.

    The engine puts the step into ``awaiting_verification``; an authorised responder then
    records what they checked, and that statement is the step's evidence.
    """


class Action(ABC):
    #: short machine name, e.g. ``postgres_promote``; recorded in the ledger
    kind: str = "action"
    #: True when the action changes a system (needs an authorised approval before it runs)
    destructive: bool = True

    @abstractmethod
    def describe(self) -> str:
        """One line saying what will happen, for the plan message."""

    #: True when ``prepare`` does something (the bot prepares such steps ahead of their approval)
    prepares_ahead: bool = False

    def prepare(self, progress: Progress) -> JsonObject | None:
        """Non-destructive work ahead of the approval (see the module docstring); returns what is ready
        (JSON-able), or None when nothing was done. Raise ActionError when it cannot be prepared."""
        return None

    def withdraw(self) -> None:
        """Remove what ``prepare`` left: the step will not run."""

    def precheck(self) -> None:
        """Raise ActionError when the action cannot run now (e.g. target unreachable)."""

    @abstractmethod
    def execute(self, progress: Progress) -> JsonObject:
        """Do the work; return JSON-able output for the ledger. Raise ActionError on failure."""

    def verify(self) -> None:
        """Raise ActionError when the effect of ``execute`` cannot be observed."""

    def is_done(self) -> bool | None:
        """After a crash: True = the effect is in place, False = it is not, None = cannot tell."""
        return None
