"""CPU time of the server side of a load test, read from Linux's /proc: a process tree
(gunicorn's master and workers, Postgres' postmaster and backends) or one process (Redis).

A tree's time counts each live process's own user and system time plus, for every process,
what its exited and reaped children used (``cutime``, ``cstime``), so a backend that exits
during the run is counted once, by its parent. The difference of two readings is the CPU the
servers spent in between, whoever else shares the cores; a load generator's own time is
left out.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat(pid: int) -> tuple[int, float, float] | None:
    """(parent pid, own CPU s, reaped children's CPU s) of ``pid``, None once it is gone."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ")".
    fields = text[text.rindex(")") + 2:].split()
    utime, stime, cutime, cstime = (int(value) for value in fields[11:15])
    return int(fields[1]), (utime + stime) / TICKS, (cutime + cstime) / TICKS


def _parents() -> dict[int, int]:
    """Every live process's parent."""
    found = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None:
                found[int(entry.name)] = stat[0]
    return found


def tree(root: int, parents: dict[int, int] | None = None) -> list[int]:
    """``root`` and every live descendant of it."""
    parents = _parents() if parents is None else parents
    children: dict[int, list[int]] = {}
    for pid, parent in parents.items():
        children.setdefault(parent, []).append(pid)
    found, waiting = [], [root]
    while waiting:
        pid = waiting.pop()
        found.append(pid)
        waiting.extend(children.get(pid, ()))
    return found


def cpu_seconds(pids: Iterable[int]) -> float:
    """The CPU seconds ``pids`` used so far, their reaped children's included."""
    total = 0.0
    for pid in pids:
        stat = _stat(pid)
        if stat is not None:
            total += stat[1] + stat[2]
    return total


@dataclass(frozen=True)
class Servers:
    """The processes whose CPU a load test charges to its requests: whole trees (the
    ``trees`` roots and their descendants, found again at each reading) and single
    ``processes``."""

    trees: tuple[int, ...]
    processes: tuple[int, ...] = ()

    def reading(self) -> float:
        """CPU seconds used so far by every process of the servers."""
        parents = _parents()
        pids = {pid for root in self.trees for pid in tree(root, parents)}
        return cpu_seconds(pids | set(self.processes))


def demo_servers(gunicorn: int) -> dict[str, Servers]:
    """The demo's servers seen from this process, by name: ``web`` (gunicorn, its master's
    pid ``gunicorn``, and its workers), ``postgres`` (the server of the default database,
    the parent of this connection's backend, with its backends) and ``redis`` (the server
    of ``CACHE_URL``, when there is one)."""
    import redis
    from django.conf import settings
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        backend = cursor.fetchone()[0]
    stat = _stat(backend)
    if stat is None:
        raise RuntimeError("the Postgres server is not on this machine: its CPU is not counted")
    servers = {"web": Servers(trees=(gunicorn,)), "postgres": Servers(trees=(stat[0],))}
    if getattr(settings, "CACHE_URL", ""):
        pid = int(redis.Redis.from_url(settings.CACHE_URL).info("server")["process_id"])
        servers["redis"] = Servers(trees=(), processes=(pid,))
    return servers


def readings(servers: dict[str, Servers]) -> dict[str, float]:
    """`Servers.reading` of each of ``servers``, by name."""
    return {name: server.reading() for name, server in servers.items()}
