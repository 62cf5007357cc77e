"""Drill messages (D1, D2): the ack, the result with its figures and pass/fail per objective, the
ops notice of a backup that failed its restore test, the listing and the refusals.

Plain values in (the ``drill_run`` row's dicts), a ``Message`` out; every word comes from
``templates/<locale>/drill.j2``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from messages import render
from messages.blocks.kit import ops_notice
from messages.views import Message

STEP_LINES = 25


def _t(locale: str, part: str, **ctx: object) -> str:
    return render.text(locale, "drill", part=part, **ctx)


def started(name: str, locale: str) -> Message:
    text = _t(locale, "started", drill=name)
    return Message(text=text, blocks=[{"type": "section", "text": {"type": "mrkdwn", "text": text}}])


def result(*, run_id: int, name: str, status: str, trigger: str, requested_by: str | None,
           objectives: Sequence[Mapping[str, object]], steps: Sequence[Mapping[str, object]],
           figures: Mapping[str, object], error: str, report_path: str | None, report_url: str | None = None,
           retest_days: float = 7, locale: str) -> Message:
    """The result post: title, objectives, steps (failed ones with their detail), report location."""
    lines = [_t(locale, "objective_line", o=o) for o in objectives]
    if "backups_in_window" in figures:
        lines.append(_t(locale, "counts", f=figures, retest_days=f"{retest_days:g}"))
    lines += [_t(locale, "step_line", s=s) for s in steps[:STEP_LINES]]
    if error:
        lines.append(_t(locale, "error", error=error))
    lines.append(_t(locale, "report", report_path=report_path, report_url=report_url))
    lines.append(_t(locale, "origin", trigger=trigger, requested_by=requested_by, run_id=run_id))
    return ops_notice(_t(locale, "result_title", drill=name, status=status), "\n".join(lines), locale)


def restore_failed(backup: Mapping[str, object], locale: str) -> Message:
    return ops_notice(_t(locale, "restore_failed_title", b=backup), _t(locale, "restore_failed_body", b=backup),
                             locale)


def listing(rows: Sequence[Mapping[str, object]], locale: str) -> Message:
    if not rows:
        text = _t(locale, "list_empty")
    else:
        text = "\n".join([_t(locale, "list_title", count=len(rows)), *(_t(locale, "list_line", r=r) for r in rows)])
    return Message(text=text, blocks=[{"type": "section", "text": {"type": "mrkdwn", "text": text[:2900]}}])


def refusal(part: str, locale: str, **ctx: object) -> Message:
    """``not_allowed`` (roles=…), ``unknown`` (drill=…, names=…) or ``busy`` (what=…)."""
    text = _t(locale, part, **ctx)
    return Message(text=text, blocks=[{"type": "section", "text": {"type": "mrkdwn", "text": text}}])
