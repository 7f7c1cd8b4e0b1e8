"""``manage.py demo_admin --password-file F``: make sure the demo's ``admin`` superuser exists
(the password is read from a file so that it never shows in a process list)."""

from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser


class Command(BaseCommand):
    """Create or update the ``admin`` superuser with the given password."""

    help = "Create or update the demo superuser 'admin'."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--password-file", required=True, type=Path)

    def handle(self, *args: Any, password_file: Path, **options: Any) -> None:
        password = password_file.read_text().strip()
        user, _ = get_user_model().objects.get_or_create(
            username="admin", defaults={"is_staff": True, "is_superuser": True})
        user.set_password(password)
        user.is_staff = user.is_superuser = True
        user.save()
