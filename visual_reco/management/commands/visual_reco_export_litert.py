"""``manage.py visual_reco_export_litert [ALIAS ...]``: convert the embedders that run on LiteRT
into their model files, where TensorFlow is installed (a build server), so that processes
without it can load them."""

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from visual_reco.conf import reco_settings
from visual_reco.embedders import DEFAULT_EMBEDDER, build_embedder
from visual_reco.embedders.litert import LiteRTEmbedder


class Command(BaseCommand):
    """Write each LiteRT embedder's model file into ``CACHE_DIR/litert`` (or its
    ``model_file``), converting it from the Keras backbone; an existing file is kept unless
    ``--force``."""

    help = "Convert the LiteRT embedders' models (needs TensorFlow; once per build)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("aliases", nargs="*", metavar="ALIAS",
                            help="embedder aliases (default: every LiteRT one)")
        parser.add_argument("--force", action="store_true", help="convert again")

    def handle(self, *args: Any, aliases: list[str], force: bool, **options: Any) -> None:
        known = [DEFAULT_EMBEDDER, *reco_settings.EMBEDDERS]
        for alias in aliases:
            if alias not in known:
                raise CommandError(f"No embedder {alias!r} (known: {', '.join(known)}).")
        embedders = {alias: build_embedder(alias=alias) for alias in aliases or known}
        chosen = {alias: embedder for alias, embedder in embedders.items()
                  if isinstance(embedder, LiteRTEmbedder)}
        for alias in aliases:
            if alias not in chosen:
                raise CommandError(f"Embedder {alias!r} is not a LiteRTEmbedder.")
        if not chosen:
            self.stdout.write("No embedder runs on LiteRT; nothing to convert.")
        for alias, embedder in chosen.items():
            path = embedder.model_file
            if path.exists() and not force:
                self.stdout.write(f"{alias}: {path} exists ({embedder.fingerprint}).")
                continue
            embedder.export()
            size = path.stat().st_size / 2**20
            self.stdout.write(f"{alias}: wrote {path} ({size:.0f} MB, {embedder.fingerprint}).")
