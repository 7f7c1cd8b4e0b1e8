"""``manage.py visual_reco_forget_visitor KEY_OR_ID``: erase one visitor's raw events."""

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from visual_reco.feedback.retention import forget_visitor


class Command(BaseCommand):
    """Erase the raw feedback events of one visitor (an erasure request)."""

    help = ("Erase one visitor's raw feedback events, given the stored key (32 hex digits) "
            "or the raw id of its vr_vid cookie (then its key of every rotation period still "
            "held is computed). The daily aggregates hold no visitor and are not changed.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("key_or_id", help="stored visitor key, or the cookie's raw id")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            result = forget_visitor(options["key_or_id"])
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"Deleted {result.events} raw event(s) under {len(result.keys)} "
                          "visitor key(s).")
        self.stdout.write("Not erased: the daily aggregates (counts per day, list and product, "
                          "with no visitor in them), and copies outside this database "
                          "(backups, logs, exports).")
