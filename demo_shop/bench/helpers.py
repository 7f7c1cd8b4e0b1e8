"""Shared by the benchmark commands: the CPU and machine line, docs/BENCHMARKS.md sections,
and a Celery worker started for a measurement."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from django.conf import settings

from visual_reco.dev_services import free_port
from visual_reco.embedders.keras import cpu_flags


def benchmarks_path() -> Path:
    """docs/BENCHMARKS.md of this repository, or ``$BENCHMARKS_MD`` (``make bench-quick``
    writes its smaller runs elsewhere so they never replace the full numbers)."""
    configured = os.environ.get("BENCHMARKS_MD")
    return Path(configured) if configured else Path(settings.BASE_DIR) / "docs" / "BENCHMARKS.md"


def cpu_model_and_mhz() -> tuple[str, float]:
    """The CPU model name and its nominal clock in MHz (from /proc/cpuinfo)."""
    model, mhz = platform.processor() or "unknown CPU", 0.0
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("cpu MHz") and not mhz:
                mhz = float(line.split(":", 1)[1])
    return model, mhz


def machine_line() -> str:
    """One sentence naming cores, CPU, clock, vector extensions and the date."""
    model, mhz = cpu_model_and_mhz()
    flags = cpu_flags()
    vector = ", ".join(f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16")
                       if f in flags) or "no AVX"
    return (f"{os.cpu_count()} cores of {model} at {mhz:.0f} MHz ({vector}), "
            f"{time.strftime('%Y-%m-%d')}")


def replace_section(text: str, heading: str, section: str) -> str:
    """``text`` with the section under ``heading`` (up to the next ``## ``) set to
    ``section``; appended when missing. Other sections are left as they are."""
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip() == heading), None)
    block = section.rstrip() + "\n"
    if start is None:
        return (text.rstrip() + "\n\n" if text.strip() else "") + block
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")),
               len(lines))
    tail = "".join(lines[end:])
    return "".join(lines[:start]) + block + ("\n" + tail if tail else "")


def write_section(section: str, path: Path | None = None) -> Path:
    """Put ``section``, markdown whose first line is its ``## `` heading, into the benchmarks
    file (created with a title if missing), replacing that section only; returns the path."""
    path = path or benchmarks_path()
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    heading = section.split("\n", 1)[0].rstrip()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(replace_section(text, heading, section))
    return path


def start_worker(queue: str, timeout: float = 180.0, *, concurrency: int = 1,
                 pool: str = "prefork", env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start a real ``celery -A demo_shop worker`` consuming ``queue`` with ``concurrency``
    processes of ``pool`` and ``env`` added to the environment; return once it answers."""
    from demo_shop.celery import app

    name = f"{queue}@localhost"
    process = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "demo_shop", "worker", "-Q", queue, "-n", name,
         "--concurrency", str(concurrency), "--pool", pool, "--without-mingle", "--without-gossip",
         "--loglevel", "WARNING"],
        cwd=settings.BASE_DIR, env={**os.environ, **(env or {})})
    deadline = time.monotonic() + timeout
    while not app.control.ping(destination=[name], timeout=1.0):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"the benchmark's Celery worker on {queue!r} did not start")
    return process


def stop(process: subprocess.Popen) -> None:
    """Terminate a child process and wait for it."""
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()


HOST = "127.0.0.1"


@contextmanager
def gunicorn_demo(workers: int, threads: int, env: dict[str, str] | None = None, *,
                  warm_models: bool = False, timeout: float = 300.0
                  ) -> Iterator[tuple[int, subprocess.Popen]]:
    """gunicorn serving the demo on a free loopback port, DEBUG off; yields the port and the
    server once it answers. With ``warm_models`` every process first loads the photo-search
    model (and embeds a photo), as `demo_shop.gunicorn_conf` does."""
    port = free_port()
    environment = {**os.environ, "DJANGO_DEBUG": "0", **(env or {})}
    command = [sys.executable, "-m", "gunicorn", "demo_shop.wsgi", "-b", f"{HOST}:{port}",
               "-w", str(workers), "--threads", str(threads), "--log-level", "warning"]
    with tempfile.TemporaryDirectory() as ready:
        if warm_models:
            command[3:3] = ["-c", "python:demo_shop.gunicorn_conf"]
            environment["GUNICORN_READY_DIR"] = ready
        server = subprocess.Popen(command, cwd=settings.BASE_DIR, env=environment)
        try:
            deadline = time.monotonic() + timeout
            while warm_models and len(list(Path(ready).iterdir())) < workers:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("gunicorn's processes did not load the model")
                time.sleep(0.5)
            while not _answers(port):
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("gunicorn did not answer")
                time.sleep(0.2)
            yield port, server
        finally:
            stop(server)


def _answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}/api/schema/", timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


def resident_mb(pid: int) -> float:
    """The resident set of process ``pid`` in MB (``VmRSS``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def children(pid: int) -> list[int]:
    """The pids of the direct children of process ``pid`` (gunicorn's or Celery's pool)."""
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            lines = status.read_text().splitlines()
        except OSError:
            continue  # gone meanwhile
        if any(line == f"PPid:\t{pid}" for line in lines):
            found.append(int(status.parent.name))
    return sorted(found)


def maps_tensorflow(pid: int) -> bool:
    """Whether process ``pid`` has TensorFlow's native library mapped (it imported it)."""
    return "tensorflow" in Path(f"/proc/{pid}/maps").read_text()
