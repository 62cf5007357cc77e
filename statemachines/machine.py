"""The incident state machine (P2), built on ``transitions``.

The machine only decides whether a trigger is legal from a state and where it leads. It is bound
to a tiny wrapper (a SQLModel row cannot be the model itself), restored with ``initial=state`` so
no callbacks fire, and has no side effects: persistence and messages happen in the service after
the transaction commits.
"""

from __future__ import annotations

from dataclasses import dataclass

from transitions import Machine, MachineError

STATES = ("detected", "assembled", "assessed", "recovering", "verified", "closed")
OPEN_STATES = STATES[:-1]

# trigger, sources, destination
TRANSITIONS: list[dict[str, object]] = [
    {"trigger": "assemble", "source": "detected", "dest": "assembled"},
    {"trigger": "assess", "source": "assembled", "dest": "assessed"},
    # a re-assessment (after abort, reject or failed verification) keeps the state, new plan
    {"trigger": "reassess", "source": "assessed", "dest": "assessed"},
    {"trigger": "start_recovery", "source": "assessed", "dest": "recovering"},
    {"trigger": "abort_recovery", "source": "recovering", "dest": "assessed"},
    {"trigger": "verify", "source": "recovering", "dest": "verified"},
    {"trigger": "verification_failed", "source": ["recovering", "verified"], "dest": "assessed"},
    {"trigger": "close", "source": "verified", "dest": "closed"},
    # a false alarm may be closed from any state before recovery starts
    {"trigger": "close_false_alarm", "source": ["detected", "assembled", "assessed"], "dest": "closed"},
]


class IllegalTransition(Exception):
    def __init__(self, trigger: str, state: str) -> None:
        super().__init__(f"cannot {trigger} an incident that is {state}")
        self.trigger = trigger
        self.state = state


@dataclass
class _Cursor:
    """The object ``transitions`` mutates: just the state name."""

    state: str


def next_state(state: str, trigger: str) -> str:
    """Return the state ``trigger`` leads to from ``state``, or raise IllegalTransition."""
    if state not in STATES:
        raise IllegalTransition(trigger, state)
    cursor = _Cursor(state)
    machine = Machine(
        model=cursor,
        states=list(STATES),
        transitions=TRANSITIONS,
        initial=state,
        auto_transitions=False,
        send_event=False,
    )
    try:
        if not machine.get_triggers(state) or trigger not in machine.get_triggers(state):
            raise IllegalTransition(trigger, state)
        getattr(cursor, trigger)()
    except MachineError:
        raise IllegalTransition(trigger, state) from None
    return cursor.state


def triggers_from(state: str) -> list[str]:
    """Triggers that are legal from ``state`` (for help texts and tests)."""
    return sorted(
        str(t["trigger"]) for t in TRANSITIONS
        if state in (t["source"] if isinstance(t["source"], list) else [t["source"]])
    )
