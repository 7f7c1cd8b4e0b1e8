"""The benchmark and quality-report commands of the demo shop."""

from django.apps import AppConfig


class BenchConfig(AppConfig):
    """``manage.py bench_*``, ``quality_report`` and ``eval_csv``; no models."""

    name = "demo_shop.bench"
    label = "bench"
