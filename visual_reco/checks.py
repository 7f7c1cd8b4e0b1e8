"""System checks: the database must be PostgreSQL with pgvector, embedding columns must match
their embedders, the API's product model must be unambiguous, caches must be shared, and
the embedders of a rollout must still be configured."""

from typing import Any

from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError, connections
from django.db.models import FileField

from visual_reco.conf import reco_settings
from visual_reco.embedders import DEFAULT_EMBEDDER, Embedder, build_embedder
from visual_reco.registry import embedded_models, embedding_fields, product_model
from visual_reco.rollout import rollout_model


@checks.register(checks.Tags.models)
def check_embedding_fields(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """E001: field dimensions differ from its embedder's; E002: bad source field;
    E003: an embedder the fields name cannot be built from the settings (once per embedder);
    E008: the fingerprint of a field's rows would not fit its fingerprint column;
    E010: a gallery field's ``product=`` is not a foreign key of its model."""
    errors: list[checks.CheckMessage] = []
    fields = [field for model in embedded_models() for field in embedding_fields(model)
              if field.model is model  # each field once, on the model that declares it
              and (app_configs is None or model._meta.app_config in app_configs)]
    embedders: dict[str, Embedder] = {}
    for alias in dict.fromkeys(field.embedder for field in fields):
        try:
            embedders[alias] = build_embedder(alias=alias)
        except Exception as exc:
            users = ", ".join(f"{f.model.__name__}.{f.name}" for f in fields
                              if f.embedder == alias)
            errors.append(checks.Error(f"Embedder {alias!r} (used by {users}) cannot be built "
                                       f"from VISUAL_RECO: {exc}", id="visual_reco.E003"))
    for field in fields:
        model = field.model
        if field.product is not None:
            try:
                field.product_key()
            except ImproperlyConfigured as exc:
                errors.append(checks.Error(str(exc), hint="product= names the ForeignKey of "
                                           "the image model to the product.", obj=field,
                                           id="visual_reco.E010"))
        source = next((f for f in model._meta.fields if f.name == field.source), None)
        if not isinstance(source, FileField):
            errors.append(checks.Error(
                f"source={field.source!r} is not an ImageField/FileField of "
                f"{model.__name__}.", obj=field, id="visual_reco.E002"))
        embedder = embedders.get(field.embedder)
        if embedder is None:
            continue
        expected = embedder.dimensions
        if field.dimensions != expected:
            errors.append(checks.Error(
                f"{model.__name__}.{field.name} stores {field.dimensions} dimensions but "
                f"its embedder {field.embedder!r} produces {expected}.",
                hint=f"Set ImageEmbeddingField(dimensions={expected}), make a migration, "
                     "and reindex; or configure an embedder of the field's size.",
                obj=field, id="visual_reco.E001"))
        fingerprint = field.fingerprint_for(embedder)
        column = model._meta.get_field(field.fingerprint_name).max_length
        if len(fingerprint) > column:
            errors.append(checks.Error(
                f"{model.__name__}.{field.name}: the fingerprint {fingerprint!r} of its "
                f"embedder {field.embedder!r} and aspects is {len(fingerprint)} characters; "
                f"{field.fingerprint_name} holds {column}.",
                hint="Give the embedder a shorter fingerprint.", obj=field,
                id="visual_reco.E008"))
    return errors


@checks.register(checks.Tags.models)
def check_product_model(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """E005: the model the API serves is ambiguous or has no embedding field."""
    if not embedded_models():
        return []
    try:
        product_model()
    except ImproperlyConfigured as exc:
        return [checks.Error(str(exc), hint="VISUAL_RECO = {'PRODUCT_MODEL': 'shop.Product'}",
                             id="visual_reco.E005")]
    return []


MIN_PGVECTOR = (0, 7)


def database_problems(connection: Any) -> list[checks.CheckMessage]:
    """E006: ``connection`` is not PostgreSQL; E007: pgvector is missing or older than 0.7
    (``halfvec``, which the embedding columns use, came in 0.7). The second one connects."""
    if connection.vendor != "postgresql":
        return [checks.Error(
            f"visual_reco needs PostgreSQL with the pgvector extension; DATABASES"
            f"[{connection.alias!r}] is {connection.vendor}.",
            hint="For development, visual-reco-services (the dev-services extra) runs one; "
                 "see the README.",
            id="visual_reco.E006")]
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT coalesce(installed_version, default_version) FROM "
                           "pg_available_extensions WHERE name = 'vector'")
            row = cursor.fetchone()
    except DatabaseError as exc:
        return [checks.Warning(f"Could not ask DATABASES[{connection.alias!r}] for pgvector: "
                               f"{exc}", id="visual_reco.W003")]
    version = tuple(int(part) for part in row[0].split(".")[:2]) if row else None
    if version is None or version < MIN_PGVECTOR:
        found = f"version {row[0]}" if row else "not installed on the server"
        return [checks.Error(
            f"visual_reco needs pgvector >= 0.7 on DATABASES[{connection.alias!r}]; it is "
            f"{found}.", hint="Install pgvector (https://github.com/pgvector/pgvector) on the "
            "PostgreSQL server.", id="visual_reco.E007")]
    return []


@checks.register(checks.Tags.models)
def check_database_vendor(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """E006 for the default database, without connecting (every ``manage.py`` run)."""
    connection = connections["default"]
    return database_problems(connection) if connection.vendor != "postgresql" else []


@checks.register(checks.Tags.database)
def check_databases(databases: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """E006/E007 for the databases a command names (``migrate`` names its own)."""
    problems = []
    for alias in databases or []:
        connection = connections[alias]
        if alias == "default" and connection.vendor != "postgresql":
            continue  # check_database_vendor reports it on every run
        problems += database_problems(connection)
    return problems


@checks.register(checks.Tags.database)
def check_rollouts(databases: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """E011: an embedder rollout (``visual_reco_model_switch``) names an alias the settings
    no longer configure, so the field's uploads and photo searches would fail."""
    if "default" not in (databases or []):
        return []
    try:
        rows = list(rollout_model()._base_manager.values_list("model", "field", "live",
                                                               "shadow"))
    except DatabaseError:
        return []  # not migrated yet; E006/E007 report an unusable database
    known = {DEFAULT_EMBEDDER, *reco_settings.EMBEDDERS}
    hints = {"live": "Configure it again: the field's column holds its vectors.",
             "shadow": "Configure it again, or `visual_reco_model_switch finish` the rollout."}
    return [checks.Error(
        f"{model}.{field}: its {role} embedder {alias!r} (visual_reco_model_switch) is not "
        "in VISUAL_RECO['EMBEDDERS'].", hint=hints[role], id="visual_reco.E011")
        for model, field, live, shadow in rows
        for role, alias in (("live", live), ("shadow", shadow)) if alias and alias not in known]


PROCESS_LOCAL_CACHES = ("django.core.cache.backends.locmem.LocMemCache",
                        "django.core.cache.backends.dummy.DummyCache")


@checks.register()
def check_read_database(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """E012: ``READ_DATABASE`` names no database (a 500 on every list otherwise)."""
    alias = reco_settings.READ_DATABASE
    if alias and alias not in settings.DATABASES:
        return [checks.Error(f"VISUAL_RECO['READ_DATABASE'] = {alias!r} is not in DATABASES.",
                             hint="Name the replica's alias in DATABASES, or None to follow "
                                  "DATABASE_ROUTERS.", id="visual_reco.E012")]
    return []


@checks.register(checks.Tags.caches)
def check_similar_cache(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """E004: ``SIMILAR_CACHE`` names no cache; W001: it names a per-process cache."""
    alias = reco_settings.SIMILAR_CACHE
    if not alias:
        return []
    config = settings.CACHES.get(alias)
    if config is None:
        return [checks.Error(f"VISUAL_RECO['SIMILAR_CACHE'] = {alias!r} is not in CACHES.",
                             id="visual_reco.E004")]
    if config.get("BACKEND") in PROCESS_LOCAL_CACHES:
        return [checks.Warning(
            f"VISUAL_RECO['SIMILAR_CACHE'] = {alias!r} is {config['BACKEND']}: each process "
            "keeps its own copy, so new embeddings written by the workers do not reach it and "
            "similar products stay stale for up to SIMILAR_CACHE_TIMEOUT seconds.",
            hint="Use a cache all processes share (Redis, Memcached, the database cache).",
            id="visual_reco.W001")]
    return []


@checks.register()
def check_prior_strength(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """E009: a ``PRIOR_STRENGTH`` (of ``RANKING``, ``PICKS`` or an A/B variant's ``RANKING``)
    that is not a number above 0: without pseudo-views a product with no click gets a rate
    of 0, whose log ranks it at minus infinity, and exploration cannot draw from it."""
    found = [("RANKING", reco_settings.RANKING.get("PRIOR_STRENGTH")),
             ("PICKS", reco_settings.PICKS.get("PRIOR_STRENGTH"))]
    for surface, test in (reco_settings.FEEDBACK.get("EXPERIMENTS") or {}).items():
        for name, spec in ((test or {}).get("VARIANTS") or {}).items():
            ranking = (spec or {}).get("RANKING") or {}
            if "PRIOR_STRENGTH" in ranking:
                found.append((f"FEEDBACK['EXPERIMENTS'][{surface!r}]['VARIANTS'][{name!r}]"
                              "['RANKING']", ranking["PRIOR_STRENGTH"]))
    errors = []
    for where, value in found:
        try:
            valid = float(value) > 0
        except (TypeError, ValueError):
            valid = False
        if not valid:
            errors.append(checks.Error(
                f"VISUAL_RECO {where}['PRIOR_STRENGTH'] = {value!r} must be a number above 0.",
                hint="It is how many views a product's own rates need to weigh as much as the "
                     "mean (50 by default).", id="visual_reco.E009"))
    return errors


@checks.register()
def check_queues(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """E013: ``QUEUES`` has a key that is no kind of work (a typo would leave that kind on
    ``TASK_QUEUE`` unnoticed) or a queue name that is not a string."""
    kinds = sorted(reco_settings.defaults["QUEUES"])
    errors = []
    for kind, queue in reco_settings.QUEUES.items():
        if kind not in kinds or not (queue is None or isinstance(queue, str)):
            errors.append(checks.Error(
                f"VISUAL_RECO['QUEUES'][{kind!r}] = {queue!r}: the keys are {kinds}, each a "
                "queue name or None (TASK_QUEUE).", id="visual_reco.E013"))
    return errors


@checks.register()
def check_search_modes(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """E014: a photo search mode (``SEARCH_MODE``, ``PHOTO_ADAPTER["MODE"]``) that is not
    None nor a name in ``ASPECT_MODES``: every photo search would fail on it."""
    modes = reco_settings.ASPECT_MODES
    found = [("SEARCH_MODE", reco_settings.SEARCH_MODE),
             ("PHOTO_ADAPTER['MODE']", reco_settings.PHOTO_ADAPTER.get("MODE"))]
    return [checks.Error(f"VISUAL_RECO {where} = {name!r} is not in ASPECT_MODES.",
                         hint=f"Use None or one of {', '.join(sorted(modes))}.",
                         id="visual_reco.E014")
            for where, name in found if name is not None and name not in modes]


@checks.register()
def check_exact_search(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """E015: ``EXACT_SEARCH_MAX_ROWS`` is neither "auto", a row count nor None (every
    filtered search would fail on it)."""
    value = reco_settings.EXACT_SEARCH_MAX_ROWS
    if value is None or value == "auto" or (isinstance(value, int) and value >= 0
                                            and not isinstance(value, bool)):
        return []
    return [checks.Error(f"VISUAL_RECO['EXACT_SEARCH_MAX_ROWS'] = {value!r} is not valid.",
                         hint='"auto" (exact or HNSW by estimated cost), a number of rows, '
                              "or None (always HNSW).", id="visual_reco.E015")]
