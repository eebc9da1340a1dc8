"""Retention: request-log lines and answered-response records older than `log.retention_days` go.

The server purges at start and then hourly (`housekeeping`, which also writes the answered-response
index to the database every half second); `tuneloop logs purge` does the same by hand, or only
counts with --dry-run. A rotated file whose last write is older than the cutoff is deleted whole;
a file that straddles the cutoff is rewritten in place without its old lines (in place, because the
server holds the current file open), under the log's lock.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tuneloop.interactions.permissions import tighten
from tuneloop.interactions.requestlog import LogLock, files

log = logging.getLogger("tuneloop.serve")

DAY_S = 86400.0
PURGE_EVERY_S = 3600.0
FLUSH_EVERY_S = 0.5  # how late another replica may see this one's answers (feedback ownership)
_TIME = re.compile(rb'^\{"time": ?([0-9]+(?:\.[0-9]+)?)[,}]')  # how RequestLog starts every line


@dataclass
class PurgeReport:
    cutoff: float  # epoch seconds: older lines go
    dry_run: bool = False
    lines_removed: int = 0
    unreadable_removed: int = 0  # lines without a time (cut by a crash) in a rewritten file
    files_deleted: list[str] = field(default_factory=list)
    files_rewritten: list[str] = field(default_factory=list)
    responses_removed: int = 0


def cutoff(days: float, now: float | None = None) -> float:
    return (time.time() if now is None else now) - days * DAY_S


def purge_log(path: Path, cut: float, lock: LogLock | None = None, dry_run: bool = False) -> PurgeReport:
    """Remove the lines older than `cut` from the log at `path` and its rotations."""
    report = PurgeReport(cut, dry_run)
    found = files(path)
    if not found:
        return report
    own = lock is None
    lock = lock or LogLock(path)
    try:
        for file in found:
            with lock:
                if file.exists():  # a rotation may have moved the oldest out of reach meanwhile
                    _purge_file(file, cut, file == path, report)
                if not dry_run:  # what stays is owner-only, whoever wrote it
                    tighten(file)
    finally:
        if own:
            lock.close()
    return report


def _purge_file(file: Path, cut: float, current: bool, report: PurgeReport) -> None:
    if not current and file.stat().st_mtime < cut:  # not written since the cutoff: every line is older
        report.lines_removed += _count_lines(file)
        report.files_deleted.append(str(file))
        if not report.dry_run:
            file.unlink()
        return
    first = _first_time(file)
    if first is not None and first >= cut:  # lines are written in time order: nothing older here
        return
    removed, unreadable = _rewrite(file, cut, report.dry_run)
    if removed or unreadable:
        report.lines_removed += removed
        report.unreadable_removed += unreadable
        report.files_rewritten.append(str(file))


def _rewrite(file: Path, cut: float, dry_run: bool) -> tuple[int, int]:
    """Keep the lines at or after `cut`, in place: the writer never passes the reader (it only drops)."""
    removed = unreadable = 0
    with file.open("rb") as reader, file.open("r+b") as writer:
        for line in reader:
            stamp = _line_time(line)
            if stamp is None and line.strip():
                unreadable += 1
            elif stamp is not None and stamp < cut:
                removed += 1
            elif stamp is not None and not dry_run:
                writer.write(line)
        if not dry_run:
            writer.truncate()
    return removed, unreadable


def _line_time(line: bytes) -> float | None:
    m = _TIME.match(line)
    if m is not None:
        return float(m.group(1))
    try:
        record = json.loads(line)
    except ValueError:
        return None
    stamp = record.get("time") if isinstance(record, dict) else None
    return float(stamp) if isinstance(stamp, (int, float)) else None


def _first_time(file: Path) -> float | None:
    with file.open("rb") as f:
        return _line_time(f.readline())


def _count_lines(file: Path) -> int:
    count = 0
    with file.open("rb") as f:
        while chunk := f.read(1 << 20):
            count += chunk.count(b"\n")
    return count


def purge(state: Any, days: float) -> PurgeReport:
    """The server's retention pass: its request log and its answered-response index."""
    cut = cutoff(days)
    request_log = state.request_log
    if request_log is not None:
        report = purge_log(request_log.path, cut, request_log.lock)
    else:
        report = PurgeReport(cut)
    before = datetime.fromtimestamp(cut, timezone.utc).replace(tzinfo=None)
    report.responses_removed = state.recent_responses.purge(before)
    if report.lines_removed or report.unreadable_removed or report.responses_removed:
        log.info(
            "retention (%g days): removed %d log lines (%d files deleted), %d response records",
            days,
            report.lines_removed + report.unreadable_removed,
            len(report.files_deleted),
            report.responses_removed,
        )
    return report


async def housekeeping(state: Any, retention_days: float | None) -> None:
    """Until cancelled: answered responses to the database every FLUSH_EVERY_S; retention hourly."""
    last_purge = -PURGE_EVERY_S
    while True:
        try:
            await asyncio.to_thread(state.recent_responses.flush)
            if retention_days is not None and time.monotonic() - last_purge >= PURGE_EVERY_S:
                last_purge = time.monotonic()
                await asyncio.to_thread(purge, state, retention_days)
        except Exception:  # the database or the disk may come back: keep serving, say why
            log.exception("housekeeping (response index, log retention) failed; retrying")
        await asyncio.sleep(FLUSH_EVERY_S)
