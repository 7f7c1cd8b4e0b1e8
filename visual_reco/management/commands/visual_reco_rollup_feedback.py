"""``manage.py visual_reco_rollup_feedback``: recompute the daily feedback aggregates."""

from typing import Any

from django.core.management.base import BaseCommand

from visual_reco.feedback.rollup import rollup


class Command(BaseCommand):
    """Recompute the aggregates of the days touched by events received since the last run."""

    help = ("Recompute the daily feedback aggregates of the days touched by events received "
            "since the last run (idempotent; the beat task visual_reco.rollup_feedback does "
            "the same).")

    def handle(self, *args: Any, **options: Any) -> None:
        result = rollup()
        if result.skipped:
            self.stdout.write("Another roll-up is running; nothing done.")
            return
        days = ", ".join(str(day) for day in result.days) or "none"
        self.stdout.write(f"Recomputed {len(result.days)} day(s): {days}")
