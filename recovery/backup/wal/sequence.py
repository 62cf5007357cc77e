"""Is the archived WAL a restore needs complete? Checked before a restored server is started.

PostgreSQL's archive recovery stops at the first segment ``restore_command`` reports absent and —
for a "latest" restore — promotes there: a hole in the archive silently ends the restore early and
everything after it is lost. So before the server starts, the WAL staged for it is checked segment
by segment, from the base backup's start up to the recovery target, along the timeline the server
will follow (``recovery_target_timeline = latest``: the newest timeline whose history contains the
backup's, read from the archived ``.history`` files). Segments inside the backup itself
(``pg_basebackup -X fetch`` carries start..stop) may be absent from the archive.

Standard library only; names assume the default 16 MiB ``wal_segment_size``, as the archive does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

SEGMENT_BYTES = 16 * 1024 * 1024
SEGMENTS_PER_ID = 0x1_0000_0000 // SEGMENT_BYTES
_SEGMENT = re.compile(r"^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})$")
_HISTORY = re.compile(r"^([0-9A-F]{8})\.history$")


def lsn_to_int(lsn: str) -> int:
    hi, lo = lsn.split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def segno_of_lsn(lsn: str) -> int:
    return lsn_to_int(lsn) // SEGMENT_BYTES


def parse_segment(name: str) -> tuple[int, int] | None:
    """``(timeline, segno)`` of a plain segment name; None for history, .partial, .backup files."""
    found = _SEGMENT.match(name)
    if not found:
        return None
    tli, log_id, seg = (int(part, 16) for part in found.groups())
    return tli, log_id * SEGMENTS_PER_ID + seg


def segment_file(tli: int, segno: int) -> str:
    return f"{tli:08X}{segno // SEGMENTS_PER_ID:08X}{segno % SEGMENTS_PER_ID:08X}"


@dataclass(frozen=True)
class TimelineSpan:
    """Timeline ``tli`` holds segments ``first``..``last`` (``last`` None: still open)."""

    tli: int
    first: int
    last: int | None

    def covers(self, segno: int) -> bool:
        return segno >= self.first and (self.last is None or segno <= self.last)


def parse_history(text: str) -> list[tuple[int, int]]:
    """``[(parent_tli, switch_lsn), ...]`` from a ``.history`` file (comments and blank lines skipped)."""
    entries = []
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) >= 2 and fields[0].isdigit() and "/" in fields[1]:
            entries.append((int(fields[0]), lsn_to_int(fields[1])))
    return entries


def timeline_chain(histories: dict[int, str], backup_tli: int, start_lsn: str) -> list[TimelineSpan]:
    """The spans recovery follows from the backup: up to the newest timeline descending from it.

    A timeline descends from the backup when its history passes through ``backup_tli`` at a switch
    point after the backup's start (a branch taken before the backup cannot be replayed onto it).
    """
    start = lsn_to_int(start_lsn)
    best: tuple[int, list[tuple[int, int]]] = (backup_tli, [])
    for tli, text in histories.items():
        if tli <= best[0]:
            continue
        entries = parse_history(text)
        if any(parent == backup_tli and switch >= start for parent, switch in entries):
            best = (tli, entries)
    target_tli, entries = best
    spans: list[TimelineSpan] = []
    first = 0
    for parent, switch in entries:
        if parent < backup_tli:
            first = switch // SEGMENT_BYTES
            continue
        spans.append(TimelineSpan(parent, first, switch // SEGMENT_BYTES))
        first = switch // SEGMENT_BYTES  # the child's copy of the switch segment supersedes the parent's
    spans.append(TimelineSpan(target_tli, first, None))
    return spans


def first_gap(
    available: set[str], histories: dict[int, str], *, backup_tli: int, start_lsn: str, stop_lsn: str | None,
    last_needed: str | None = None,
) -> str | None:
    """The first segment missing between the backup's start and the target, or None when complete.

    ``available``: the archived file names staged for the restore. ``last_needed``: the newest
    segment recovery must reach (the one holding a point-in-time target); None means "latest",
    i.e. the newest archived segment on the chain.
    """
    spans = timeline_chain(histories, backup_tli, start_lsn)
    on_chain: dict[int, set[int]] = {}
    for name in available:
        parsed = parse_segment(name)
        if parsed is None:
            continue
        tli, segno = parsed
        if any(span.tli == tli and span.covers(segno) for span in spans):
            on_chain.setdefault(segno, set()).add(tli)
    if not on_chain:
        return None
    end = max(on_chain)
    if last_needed is not None and (parsed_last := parse_segment(last_needed)) is not None:
        end = min(end, parsed_last[1])
    begin = segno_of_lsn(start_lsn)
    in_backup = segno_of_lsn(stop_lsn) if stop_lsn else begin - 1
    for segno in range(begin, end + 1):
        if segno <= in_backup or segno in on_chain:
            continue
        newest = max((span.tli for span in spans if span.covers(segno)), default=backup_tli)
        return segment_file(newest, segno)
    return None


def histories_in(directory: Path) -> dict[int, str]:
    """Timeline history files staged in ``directory``: ``{timeline: text}``."""
    found = {}
    for path in directory.iterdir():
        match = _HISTORY.match(path.name)
        if match:
            found[int(match.group(1), 16)] = path.read_text(encoding="utf-8", errors="replace")
    return found
