"""visual_reco's own tables: shopper feedback, the text index, the embedder rollouts. The
vectors that serve live on the shop's own tables.

Django sends ``pre_migrate`` and ``post_migrate`` only to apps with a models module, and
visual_reco needs both (the ``vector`` extension before the shop's migrations, inline vector
storage after them).
"""

from django.contrib.postgres.indexes import GinIndex
from django.contrib.postgres.search import SearchVectorField
from django.db import connection, models, router, transaction
from pgvector.django import HalfVectorField

from visual_reco.choices import EmbeddingStatus, EventType

__all__ = ["EmbedderRollout", "EmbeddingShadow", "EmbeddingStatus", "EventType",
           "FeedbackDaily", "FeedbackEvent", "FeedbackPairStats", "FeedbackPositionDaily",
           "FeedbackProductStats", "FeedbackRollup", "FeedbackVariantDaily", "LearnedRanking",
           "PhotoAdapter", "TextDocument", "quoted_table"]


class FeedbackEvent(models.Model):
    """One shopper action, append-only; written only by `visual_reco.feedback.events`.

    The served list it belongs to is copied from its token (surface, variant, source, the
    position and the model's fingerprint), so aggregates never need the token again.
    Products are stored by primary key as text, whatever the shop's key type.
    """

    type = models.CharField(max_length=16, choices=EventType.choices)
    occurred_at = models.DateTimeField()
    received_at = models.DateTimeField(auto_now_add=True)
    visitor = models.CharField(max_length=32)
    user_id = models.CharField(max_length=64, blank=True, default="")
    event_id = models.CharField(max_length=64)
    surface = models.CharField(max_length=32, blank=True, default="")
    variant = models.CharField(max_length=32, blank=True, default="")
    source = models.CharField(max_length=64, blank=True, default="")
    product = models.CharField(max_length=64)
    position = models.PositiveSmallIntegerField(null=True, blank=True)
    list_id = models.CharField(max_length=16, blank=True, default="")
    fingerprint = models.CharField(max_length=16, blank=True, default="")
    quantity = models.PositiveIntegerField(default=1)
    revenue = models.DecimalField(max_digits=12, decimal_places=2, null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["visitor", "event_id"],
                                               name="visual_reco_event_once")]
        indexes = [
            # Last-touch attribution: this visitor's latest click on this product.
            models.Index(fields=["visitor", "product", "occurred_at"],
                         name="visual_reco_event_touch"),
            # Roll-ups read what arrived since the last one.
            models.Index(fields=["received_at"], name="visual_reco_event_received"),
            # Roll-ups recompute whole days; purges delete the oldest.
            models.Index(fields=["occurred_at"], name="visual_reco_event_occurred"),
            # Picked for you: a visitor's latest events, read newest first up to a cap.
            models.Index(fields=["visitor", "occurred_at"], name="visual_reco_event_recent"),
            # The same for a logged-in user (user ids are stored only with STORE_USER_ID).
            models.Index(fields=["user_id", "occurred_at"], condition=~models.Q(user_id=""),
                         name="visual_reco_event_user_recent"),
        ]

    def __str__(self) -> str:
        return f"{self.type} {self.product} ({self.surface or 'unattributed'})"


class FeedbackDaily(models.Model):
    """Events of one UTC day per served list kind and product, counted from the raw events
    by `visual_reco.feedback.rollup` (the one writer). No visitor is stored here: these rows
    outlive the raw events (``RETENTION_DAYS``) and a visitor's erasure."""

    day = models.DateField()
    surface = models.CharField(max_length=32, blank=True, default="")
    variant = models.CharField(max_length=32, blank=True, default="")
    source = models.CharField(max_length=64, blank=True, default="")
    product = models.CharField(max_length=64)
    impressions = models.PositiveIntegerField(default=0)
    # Impressions weighted by how often their list position is looked at (see
    # `visual_reco.feedback.ranking.examination`): the views the products really got.
    examined = models.FloatField(default=0.0)
    clicks = models.PositiveIntegerField(default=0)
    add_to_carts = models.PositiveIntegerField(default=0)
    purchases = models.PositiveIntegerField(default=0)
    favorites = models.PositiveIntegerField(default=0)
    dismissals = models.PositiveIntegerField(default=0)
    revenue = models.DecimalField(max_digits=14, decimal_places=2, default=0)

    class Meta:
        verbose_name = "feedback analytics"
        verbose_name_plural = "feedback analytics"
        constraints = [models.UniqueConstraint(
            fields=["day", "surface", "variant", "source", "product"],
            name="visual_reco_daily_once")]
        indexes = [models.Index(fields=["surface", "variant", "day"],
                                name="visual_reco_daily_variant")]

    def __str__(self) -> str:
        return f"{self.day} {self.surface}/{self.variant} {self.product}"


class FeedbackVariantDaily(models.Model):
    """Distinct visitor keys of one UTC day per surface and variant: those with any event
    (for the sample-ratio check) and those who clicked. Written by the roll-up only."""

    day = models.DateField()
    surface = models.CharField(max_length=32)
    variant = models.CharField(max_length=32, blank=True, default="")
    visitors = models.PositiveIntegerField(default=0)
    clickers = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["day", "surface", "variant"],
                                               name="visual_reco_variant_daily_once")]

    def __str__(self) -> str:
        return f"{self.day} {self.surface}/{self.variant}: {self.visitors} visitors"


class FeedbackPositionDaily(models.Model):
    """Impressions and clicks of one UTC day per surface, variant and position in the list:
    how often each position is looked at, for debiasing click rates
    (`visual_reco.feedback.ranking.examination`). Written by the roll-up only."""

    day = models.DateField()
    surface = models.CharField(max_length=32)
    variant = models.CharField(max_length=32, blank=True, default="")
    position = models.PositiveSmallIntegerField()
    impressions = models.PositiveIntegerField(default=0)
    clicks = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["day", "surface", "variant", "position"],
                                               name="visual_reco_position_daily_once")]

    def __str__(self) -> str:
        return f"{self.day} {self.surface}/{self.variant} #{self.position}"


class FeedbackStats(models.Model):
    """Running totals over every rolled-up day, kept by the roll-up (the one writer) as it
    replaces days: what re-ranking reads, a few rows per request instead of a sum over days."""

    surface = models.CharField(max_length=32, blank=True, default="")
    product = models.CharField(max_length=64)
    impressions = models.BigIntegerField(default=0)
    examined = models.FloatField(default=0.0)
    clicks = models.BigIntegerField(default=0)
    add_to_carts = models.BigIntegerField(default=0)
    purchases = models.BigIntegerField(default=0)

    class Meta:
        abstract = True

    @property
    def conversions(self) -> int:
        """Carts and purchases: what a click led to."""
        return self.add_to_carts + self.purchases


class FeedbackPairStats(FeedbackStats):
    """Totals per surface, source and product: how shoppers treated this product when it
    was shown for that source."""

    source = models.CharField(max_length=64)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["surface", "source", "product"],
                                               name="visual_reco_pair_stats_once")]

    def __str__(self) -> str:
        return f"{self.surface} {self.source} -> {self.product}"


class FeedbackProductStats(FeedbackStats):
    """Totals per surface and product, over every source (surface ``""``: events that no
    served list led to, such as purchases found by other means)."""

    class Meta:
        constraints = [models.UniqueConstraint(fields=["surface", "product"],
                                               name="visual_reco_product_stats_once")]

    def __str__(self) -> str:
        return f"{self.surface or 'unattributed'} {self.product}"


class FeedbackRollup(models.Model):
    """The roll-up's watermark: events received from ``watermark`` on (less a margin for
    transactions still open) have not been counted yet. One row, written by the roll-up."""

    name = models.CharField(max_length=32, primary_key=True)
    watermark = models.DateTimeField()
    finished_at = models.DateTimeField()
    days = models.PositiveIntegerField(default=0)

    def __str__(self) -> str:
        return f"{self.name}: up to {self.watermark:%Y-%m-%d %H:%M:%S}"


class LearnedVersion(models.Model):
    """One version of something learned on top of an embedding field's frozen vectors: its
    ``version`` (a hash of what it was trained from, so training again on the same data
    gives the same version), the embedder ``fingerprint`` it was trained on, how it was
    judged, and its weights. It serves only while ``fingerprint`` is the field's embedder's,
    and at most one version serves per field (`make_serving` is what changes that)."""

    version = models.CharField(max_length=16, unique=True)
    model = models.CharField(max_length=100)
    field = models.CharField(max_length=100)
    fingerprint = models.CharField(max_length=128)
    created_at = models.DateTimeField(auto_now_add=True)
    params = models.JSONField(default=dict)
    metrics = models.JSONField(default=dict)
    serving = models.BooleanField(default=False)
    decision = models.CharField(max_length=200, blank=True, default="")
    weights = models.BinaryField(editable=False)

    class Meta:
        abstract = True

    def __str__(self) -> str:
        return f"{self.model}.{self.field} {self.version}{' (serving)' if self.serving else ''}"

    def make_serving(self, serving: bool = True) -> None:
        """Make this the version that serves for its field (the one before stops), or with
        ``serving=False`` stop it serving (the field then has none)."""
        rows = type(self)._base_manager.db_manager(router.db_for_write(type(self)))
        with transaction.atomic(using=rows.db):
            if serving:
                (rows.filter(model=self.model, field=self.field, serving=True)
                 .exclude(pk=self.pk).update(serving=False))
            rows.filter(pk=self.pk).update(serving=serving)
        self.serving = serving


class LearnedRanking(LearnedVersion):
    """One version of the ranking learned from feedback (`visual_reco.feedback.learning`
    writes it, `visual_reco.feedback.learned` serves it); ``metrics`` are the held-out
    numbers of the visual order and of this model (see `learning.evaluate`)."""

    # The events it was trained and judged on: count and highest id.
    events = models.PositiveIntegerField(default=0)
    last_event = models.BigIntegerField(default=0)

    class Meta:
        verbose_name = "learned ranking"
        constraints = [models.UniqueConstraint(
            fields=["model", "field"], condition=models.Q(serving=True),
            name="visual_reco_learned_one_serving")]


class PhotoAdapter(LearnedVersion):
    """One version of the photo-search adapter of an embedding field: a map of its frozen
    vectors learned from the extra photos of a gallery (`visual_reco.photo_adapter_learning`
    writes it, `visual_reco.photo_adapter` serves it to photo search only); ``metrics`` are
    held-back R@1 / R@5 without and with it (see `photo_adapter_learning.judge`)."""

    # Extra photos trained on and held back to judge it.
    photos = models.PositiveIntegerField(default=0)
    held = models.PositiveIntegerField(default=0)

    class Meta:
        verbose_name = "photo adapter"
        constraints = [models.UniqueConstraint(
            fields=["model", "field"], condition=models.Q(serving=True),
            name="visual_reco_photo_adapter_one_serving")]


class TextDocument(models.Model):
    """The words of one product for full-text search (`visual_reco.text_search` writes and
    reads it): the ``TEXT_SEARCH["FIELDS"]`` of the object ``object_id`` (its primary key as
    text, whatever the shop's key type) of ``model`` as a weighted ``tsvector``, and the
    ``fingerprint`` of the settings it was built with. The shop's own table is not changed."""

    model = models.CharField(max_length=100)
    object_id = models.CharField(max_length=64)
    document = SearchVectorField()
    fingerprint = models.CharField(max_length=16)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "text search document"
        constraints = [models.UniqueConstraint(fields=["model", "object_id"],
                                               name="visual_reco_text_once")]
        indexes = [GinIndex(fields=["document"], name="visual_reco_text_document")]

    def __str__(self) -> str:
        return f"{self.model} {self.object_id}"


class EmbedderRollout(models.Model):
    """Which embedder an embedding field's column holds, and which one fills its shadow
    (`visual_reco.rollout` reads it; `visual_reco.model_switch` is the one writer).

    No row: the column holds the field's declared ``embedder`` and there is no shadow.
    ``live`` is the alias whose vectors the column holds, that new uploads and search
    photos are embedded with; ``shadow`` (``""`` for none) the alias whose vectors workers
    also write to `EmbeddingShadow`: the candidate before a switch, the previous embedder
    after one (so that a rollback needs no re-embedding). ``filled_at``: when the rows
    lacking a shadow vector were last queued (`start`, `switch`, the sweep), so that the
    sweep leaves that work alone for ``SWEEP_GRACE`` seconds.
    """

    model = models.CharField(max_length=100)
    field = models.CharField(max_length=100)
    live = models.CharField(max_length=100)
    shadow = models.CharField(max_length=100, blank=True, default="")
    started_at = models.DateTimeField()
    switched_at = models.DateTimeField(null=True, blank=True)
    filled_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "embedder rollout"
        constraints = [models.UniqueConstraint(fields=["model", "field"],
                                               name="visual_reco_rollout_once")]

    def __str__(self) -> str:
        shadow = f", shadow {self.shadow}" if self.shadow else ""
        return f"{self.model}.{self.field}: live {self.live}{shadow}"


class EmbeddingShadow(models.Model):
    """A vector of one row of a shop's model made by an embedder that does not serve: the
    candidate's while it is rolled out, the previous one's after a switch. ``object_id`` is
    the primary key as text (any key type), ``source`` the image file it was computed from
    (a row whose image changed since is not covered), ``vector`` a ``halfvec`` of any size,
    None when the image could not be embedded (``error`` says why), ``aspects`` the aspect
    vectors by name as pgvector text. The shop's own table gets no column and no migration.
    A row's shadow vectors are deleted with it (`visual_reco.signals`).
    """

    model = models.CharField(max_length=100)
    field = models.CharField(max_length=100)
    object_id = models.CharField(max_length=64)
    fingerprint = models.CharField(max_length=128)
    source = models.TextField()
    vector = HalfVectorField(null=True, blank=True)
    aspects = models.JSONField(default=dict)
    error = models.TextField(blank=True, default="")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "shadow embedding"
        constraints = [models.UniqueConstraint(
            fields=["model", "field", "fingerprint", "object_id"],
            name="visual_reco_shadow_once")]
        # A deleted row's shadow vectors go with it, whatever their fingerprint.
        indexes = [models.Index(fields=["model", "field", "object_id"],
                                name="visual_reco_shadow_row")]

    def __str__(self) -> str:
        return f"{self.model}.{self.field} {self.object_id} ({self.fingerprint})"


def quoted_table(model: type[models.Model]) -> str:
    """The quoted SQL name of ``model``'s table, for the feedback code's raw SQL."""
    return connection.ops.quote_name(model._meta.db_table)
