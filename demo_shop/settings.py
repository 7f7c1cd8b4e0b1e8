"""Settings of the demo shop. DATABASE_URL and CELERY_BROKER_URL come from the environment
(``python -m demo_shop.services`` sets them)."""

import os
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import dj_database_url

from visual_reco.conf import DEFAULTS

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "demo-only-not-secret")
# Off unless asked for (DJANGO_DEBUG=1): debug pages show settings and paths to anyone.
DEBUG = os.environ.get("DJANGO_DEBUG", "0") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]

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
    "demo_shop.shop",
    "demo_shop.bench",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "demo_shop.middleware.DatabaseUnavailableMiddleware",
]

ROOT_URLCONF = "demo_shop.urls"
WSGI_APPLICATION = "demo_shop.wsgi.application"
TEMPLATES = [{
    "BACKEND": "django.template.backends.django.DjangoTemplates",
    "DIRS": [],
    "APP_DIRS": True,
    "OPTIONS": {"context_processors": [
        "django.template.context_processors.request",
        "django.contrib.auth.context_processors.auth",
        "django.contrib.messages.context_processors.messages",
    ]},
}]

DATABASES = {"default": dj_database_url.parse(
    os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/visual_reco"),
    conn_max_age=60, conn_health_checks=True)}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

STATIC_URL = "static/"
STATIC_ROOT = Path(os.environ.get("DEMO_STATIC_ROOT", BASE_DIR / ".cache" / "services" / "static"))
MEDIA_URL = "media/"
MEDIA_ROOT = Path(os.environ.get("DEMO_MEDIA_ROOT", BASE_DIR / ".cache" / "services" / "media"))
USE_TZ = True
TIME_ZONE = "UTC"

REST_FRAMEWORK = {"DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema"}
SPECTACULAR_SETTINGS = {"TITLE": "visual_reco demo shop API", "VERSION": "0.1.0"}

CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
# A task held by a worker that died goes back to the queue after visibility_timeout (an
# embedding batch takes seconds); workers look for such tasks every 10 s.
CELERY_BROKER_TRANSPORT_OPTIONS = {"socket_connect_timeout": 3, "visibility_timeout": 45,
                                   "unacked_restore_throttle": 1}
CELERY_TASK_IGNORE_RESULT = True
# Only for QUERY_EMBEDDING="worker" (photo search through a worker) and its benchmark.
CELERY_RESULT_BACKEND = CELERY_BROKER_URL
CELERY_RESULT_EXPIRES = 300
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BEAT_SCHEDULE = {
    "visual-reco-sweep": {"task": "visual_reco.sweep", "schedule": 300.0},
    # Shopper feedback: daily aggregates for the admin's analytics, and the retention.
    # Every 15 s: in the demo, a click shows in the ranking within seconds.
    "visual-reco-rollup-feedback": {"task": "visual_reco.rollup_feedback", "schedule": 15.0},
    "visual-reco-purge-feedback": {"task": "visual_reco.purge_feedback", "schedule": 86400.0},
    # The ranking learned from feedback: trained, judged, served only when it does better.
    "visual-reco-learn-ranking": {"task": "visual_reco.learn_ranking", "schedule": 86400.0},
}

# A demo has one shopper: a rate weighs as much as the mean after 5 views, not 50, so that
# one click and one purchase visibly move a product up for everyone.
# Luma's style code groups a design's colour variants (mode same_style_other_colours).
# DIVERSITY 0.9: chosen on the Luma tune half by `manage.py bench_diversity` (docs/QUALITY.md).
VISUAL_RECO = {"PRODUCT_MODEL": "shop.Product", "RANKING": {"PRIOR_STRENGTH": 5.0},
               "VARIANT_FIELD": "style", "DIVERSITY": 0.9}
if os.environ.get("DEMO_RATE_LIMITS", "1") == "0":  # benchmarks: one client sends it all
    VISUAL_RECO["THROTTLE_RATES"] = dict.fromkeys(DEFAULTS["THROTTLE_RATES"])
if os.environ.get("DEMO_RANKING") == "visual":  # benchmarks: the visual order, no feedback
    VISUAL_RECO["RANKING"] = {"RERANK": False}
elif os.environ.get("DEMO_RANKING") == "reranked":  # benchmarks: the library's defaults
    VISUAL_RECO["RANKING"] = {}
if "DEMO_QUERY_MULTI_CROP" in os.environ:  # benchmarks: the photo search's query views
    VISUAL_RECO["QUERY_MULTI_CROP"] = float(os.environ["DEMO_QUERY_MULTI_CROP"])
if "DEMO_QUERY_EMBEDDING" in os.environ:  # benchmarks: "process" or "worker"
    VISUAL_RECO["QUERY_EMBEDDING"] = os.environ["DEMO_QUERY_EMBEDDING"]
if "DEMO_QUERY_QUEUE" in os.environ:  # benchmarks: the queue of the query worker
    VISUAL_RECO["QUEUES"] = {"query": os.environ["DEMO_QUERY_QUEUE"]}
if os.environ.get("DEMO_EMBEDDER_PRECISION") == "litert":  # benchmarks: no TensorFlow
    VISUAL_RECO["EMBEDDER"] = {"BACKEND": "visual_reco.embedders.litert.LiteRTEmbedder",
                               "OPTIONS": {**DEFAULTS["EMBEDDER"]["OPTIONS"],
                                           "precision": "float32"}}
elif "DEMO_EMBEDDER_PRECISION" in os.environ:  # benchmarks: float32, bfloat16 or auto
    VISUAL_RECO["EMBEDDER"] = {**DEFAULTS["EMBEDDER"], "OPTIONS": {
        **DEFAULTS["EMBEDDER"]["OPTIONS"], "precision": os.environ["DEMO_EMBEDDER_PRECISION"]}}


def redis_database(url: str, number: int) -> str:
    """``url`` (redis://host:port/n) pointing at database ``number`` instead."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{number}"))


# Similar-products lists are cached in Redis (the broker's server, database 1): every
# process shares it, so a new embedding written by a worker invalidates them everywhere.
CACHE_URL = os.environ.get("CACHE_URL") or (
    redis_database(CELERY_BROKER_URL, 1) if CELERY_BROKER_URL.startswith("redis") else "")
if CACHE_URL:
    # Short timeouts: with Redis down or frozen, pages answer uncached instead of waiting.
    CACHES = {"default": {"BACKEND": "demo_shop.cache.RedisCache",
                          "LOCATION": CACHE_URL,
                          "OPTIONS": {"socket_connect_timeout": 0.25, "socket_timeout": 0.25}}}
    if os.environ.get("DEMO_SIMILAR_CACHE", "1") == "1":  # 0: off (bench_api measures both)
        VISUAL_RECO["SIMILAR_CACHE"] = "default"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"visual_reco": {"handlers": ["console"], "level": "INFO"}},
}
