"""The demo shop deployed for real: behind a TLS-terminating proxy, with its secret key and
host names from the environment. ``manage.py check --deploy`` is clean for it (tested).

    DJANGO_SETTINGS_MODULE=demo_shop.settings_production DJANGO_SECRET_KEY=... \\
    DJANGO_ALLOWED_HOSTS=shop.example.com gunicorn demo_shop.wsgi

`make demo` serves plain HTTP on 127.0.0.1 and keeps ``demo_shop.settings``.
"""

import os

from django.core.exceptions import ImproperlyConfigured

from demo_shop.settings import *  # noqa: F403

DEBUG = False
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "")
if len(SECRET_KEY) < 50 or len(set(SECRET_KEY)) < 5:
    raise ImproperlyConfigured("Set DJANGO_SECRET_KEY to a random value of 50 or more "
                               "characters (python -c 'import secrets; "
                               "print(secrets.token_urlsafe(50))').")
ALLOWED_HOSTS = [host for host in os.environ.get("DJANGO_ALLOWED_HOSTS", "").split(",") if host]
if not ALLOWED_HOSTS:
    raise ImproperlyConfigured("Set DJANGO_ALLOWED_HOSTS to the shop's host names, "
                               "separated by commas.")

# The proxy terminates TLS and says so in X-Forwarded-Proto; it must overwrite that header
# from clients, or any client could claim HTTPS.
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = True
SECURE_HSTS_SECONDS = 365 * 24 * 3600
SECURE_HSTS_INCLUDE_SUBDOMAINS = True
SECURE_HSTS_PRELOAD = True
SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True
