"""The fault-injection suite's results: one row per fault, written into docs/RELIABILITY.md
between its markers once every fault has been run in one session (a partial run prints the
rows and leaves the file alone)."""

from __future__ import annotations

import os
import platform
import subprocess
from dataclasses import dataclass
from datetime import date
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "RELIABILITY.md"
START, END = "<!-- fault-table:start -->", "<!-- fault-table:end -->"
# Every fault the suite injects, in the order of the table.
FAULTS = [
    "Redis frozen (SIGSTOP): broker, cache and throttle counts",
    "Redis killed, restarted empty (broker down at save)",
    "Postgres restarted",
    "Weights file corrupted",
    "Worker pool child killed mid-batch (OOM killer)",
    "Whole worker killed mid-batch",
    "Web process killed twice under shopper-feedback load",
]


@dataclass
class Row:
    """What one injected fault did."""

    fault: str
    happened: str
    recovered_s: float
    lost: int


ROWS: dict[str, Row] = {}


def record(fault: str, happened: str, recovered_s: float, lost: int) -> None:
    """Keep the result of ``fault`` (one of `FAULTS`) for the table."""
    assert fault in FAULTS, fault
    ROWS[fault] = Row(fault, happened, round(recovered_s, 1), lost)


def _machine() -> str:
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in
                   subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
                   if line.startswith("Model name"))
    except (OSError, StopIteration):
        cpu = platform.processor() or platform.machine()
    return f"{cpu}, {len(os.sched_getaffinity(0))} cores"


def table() -> str:
    """The rows as a Markdown table, with the command and the machine."""
    lines = [
        f"Measured by `make test` (the suite `tests/test_fault_injection.py` and "
        f"`tests/test_faults.py`) on {_machine()}, {date.today().isoformat()}.",
        "",
        "| fault | what happened | time to recover (s) | products (or event batches) lost |",
        "| --- | --- | ---: | ---: |",
    ]
    lines += [f"| {r.fault} | {r.happened} | {r.recovered_s:g} | {r.lost} |"
              for name in FAULTS if (r := ROWS.get(name))]
    return "\n".join(lines)


def write() -> bool:
    """Put the table into docs/RELIABILITY.md when every fault has a row; say whether."""
    if set(ROWS) != set(FAULTS) or not DOC.exists():
        return False
    text = DOC.read_text()
    if START not in text or END not in text:
        return False
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    DOC.write_text(f"{head}{START}\n{table()}\n{END}{tail}")
    return True
