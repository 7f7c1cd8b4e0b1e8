"""Which database visual_reco reads from: a replica for what it serves, the primary for
what it writes and for every read that decides a write.

Serving reads (similar products, search by photo and words, picked for you, the evidence
and learned ranking they read) go to ``READ_DATABASE`` when it names an alias, else where
the project's routers send reads of the model (``router.db_for_read``, what
``Model.objects`` does), so a shop's replica router applies to them unchanged. A queryset
the caller pinned with ``using()`` keeps its database.

Writes, and the reads a write depends on (the rows a worker embeds, the sweep's, the
roll-up's, last-touch attribution), name ``router.db_for_write`` themselves: a replica lags
its primary, and a row read there may not exist yet or may still show its old image.
"""

from __future__ import annotations

from typing import TypeVar

from django.db import models, router

from visual_reco.conf import reco_settings

Q = TypeVar("Q", bound=models.QuerySet)


def read_database(model: type[models.Model]) -> str:
    """The alias visual_reco's serving reads of ``model`` use: ``READ_DATABASE``, else
    the routers' ``db_for_read``."""
    return reco_settings.READ_DATABASE or router.db_for_read(model)


def reading(queryset: Q) -> Q:
    """``queryset`` on ``READ_DATABASE`` when that is set and the caller did not choose a
    database with ``using()``; else ``queryset`` itself (its reads follow the routers)."""
    alias = reco_settings.READ_DATABASE
    if alias and queryset._db is None:
        return queryset.using(alias)
    return queryset
