"""The monitor's ops-channel notices (M2): a CRITICAL alert, a HIGH warning, the all-clear, and
more evidence added to an open incident (a second source reporting the same ransomware).

Plain values in (a condition's key, summary, evidence dicts), a ``Message`` out; every word comes
from ``templates/<locale>/monitor.j2``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from messages import render
from messages.blocks import kit as block_kit
from messages.views import Message


def _t(locale: str, part: str, **ctx: object) -> str:
    return render.text(locale, "monitor", part=part, **ctx)


def evidence_lines(evidence: Sequence[Mapping[str, object]], locale: str) -> str:
    return "\n".join(_t(locale, "evidence_line", e=e) for e in evidence)


def critical_alert(*, key: str, scenario: str, summary: str, evidence: Sequence[Mapping[str, object]],
                   incident_key: str, invited: int, locale: str) -> Message:
    """``invited``: how many people the roster invited (none: the post says so instead of "paged")."""
    body = _t(locale, "critical_body", summary=summary, scenario=scenario, incident_key=incident_key,
              invited=invited)
    return block_kit.ops_notice(_t(locale, "critical_title", key=key, scenario=scenario),
                             f"{body}\n{evidence_lines(evidence, locale)}", locale)


def warning(*, key: str, summary: str, since: datetime, evidence: Sequence[Mapping[str, object]],
            repeat_minutes: float, locale: str) -> Message:
    body = _t(locale, "warning_body", summary=summary, since=since, repeat_minutes=f"{repeat_minutes:g}")
    return block_kit.ops_notice(_t(locale, "warning_title", key=key), f"{body}\n{evidence_lines(evidence, locale)}",
                             locale)


def all_clear(*, key: str, since: datetime, cleared: datetime, locale: str) -> Message:
    return block_kit.ops_notice(_t(locale, "clear_title", key=key),
                             _t(locale, "clear_body", since=since, cleared=cleared), locale)


def timeline_text(*, rule: str, summary: str, evidence: Sequence[Mapping[str, object]], locale: str) -> str:
    return f"{_t(locale, 'timeline', rule=rule, summary=summary)}\n{evidence_lines(evidence, locale)}"


def evidence_attached(*, key: str, scenario: str, source: str, summary: str,
                      evidence: Sequence[Mapping[str, object]], incident_key: str, locale: str) -> Message:
    """A CRITICAL condition added to the incident already open for its scenario (no second incident)."""
    body = _t(locale, "attached_body", source=source, summary=summary, incident_key=incident_key)
    return block_kit.ops_notice(_t(locale, "attached_title", key=key, scenario=scenario),
                             f"{body}\n{evidence_lines(evidence, locale)}", locale)


def timeline_attached_text(*, rule: str, source: str, summary: str, evidence: Sequence[Mapping[str, object]],
                           locale: str) -> str:
    return f"{_t(locale, 'timeline_attached', rule=rule, source=source, summary=summary)}\n" \
           f"{evidence_lines(evidence, locale)}"
