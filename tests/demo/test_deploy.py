"""The demo shop's production settings pass Django's deployment checklist."""

import os
import secrets
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent


def _check_deploy(**env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO_")}
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**base, "DJANGO_SETTINGS_MODULE": "demo_shop.settings_production", **env})


def test_check_deploy_is_clean_for_the_production_settings():
    run = _check_deploy(DJANGO_SECRET_KEY=secrets.token_urlsafe(50),
                        DJANGO_ALLOWED_HOSTS="shop.example.com")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "no issues" in run.stdout


def test_production_settings_refuse_to_start_without_a_real_secret_key():
    run = _check_deploy(DJANGO_SECRET_KEY="short", DJANGO_ALLOWED_HOSTS="shop.example.com")
    assert run.returncode != 0
    assert "DJANGO_SECRET_KEY" in run.stderr and "50" in run.stderr


def test_the_local_demo_settings_are_what_check_deploy_warns_about():
    """The plain-HTTP settings of `make demo` are not the deployable ones (the check is
    not vacuous)."""
    run = _check_deploy(DJANGO_SETTINGS_MODULE="demo_shop.settings")
    assert run.returncode != 0
    assert "SECURE_SSL_REDIRECT" in run.stdout + run.stderr
