"""``manage.py visual_reco_purge_events [--older-than 90d]``: delete old raw events."""

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from visual_reco.feedback.retention import PURGE_BATCH, parse_age, purge_events, retention


class Command(BaseCommand):
    """Delete raw feedback events older than the retention; the daily aggregates stay."""

    help = ("Delete raw feedback events older than --older-than (default "
            "FEEDBACK['RETENTION_DAYS']), in batches, after rolling them up. The daily "
            "aggregates are kept.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--older-than", metavar="AGE",
                            help="e.g. 90d, 12h or 30m (default: the retention setting)")
        parser.add_argument("--batch-size", type=int, default=PURGE_BATCH)

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            age = parse_age(options["older_than"]) if options["older_than"] else retention()
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        if options["batch_size"] < 1:
            raise CommandError("--batch-size must be at least 1")
        deleted = purge_events(age, batch_size=options["batch_size"])
        self.stdout.write(f"Deleted {deleted} raw event(s) older than {age}.")
