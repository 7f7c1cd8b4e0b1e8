"""App configuration: system checks, signal receivers for every embedded model, the pgvector
extension before migrations, and inline vector storage after them."""

from typing import Any

from django.apps import AppConfig
from django.db import connections
from django.db.models.signals import post_migrate, pre_migrate

from visual_reco import checks, text_search  # noqa: F401  registers the checks
from visual_reco.inline_storage import store_vectors_inline
from visual_reco.signals import connect_receivers


def create_vector_extension(using: str = "default", **kwargs: Any) -> None:
    """Create the pgvector extension before any migration needs the ``halfvec`` type."""
    connection = connections[using]
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("CREATE EXTENSION IF NOT EXISTS vector")


class VisualRecoConfig(AppConfig):
    """visual_reco's AppConfig."""

    name = "visual_reco"
    verbose_name = "Visual recommendations"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Every model module is imported by now, so every embedding field has registered.
        connect_receivers()
        pre_migrate.connect(create_vector_extension, sender=self,
                            dispatch_uid="visual_reco.create_vector_extension")
        post_migrate.connect(store_vectors_inline, sender=self,
                             dispatch_uid="visual_reco.store_vectors_inline")
