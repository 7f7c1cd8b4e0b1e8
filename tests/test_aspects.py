"""Aspects: the colour vector an ImageEmbeddingField stores beside the CNN vector, its column,
index, fingerprint and state, and how embedders compute it from the prepared image."""

from collections.abc import Sequence

import numpy as np
import pytest
from django.core import checks
from django.db import connection
from pgvector.django import HalfVectorField
from PIL import Image

from tests.testapp.models import Item, ItemImage, Look
from visual_reco import colour
from visual_reco.aspects import compute_aspects, get_aspect, signature
from visual_reco.choices import EmbeddingStatus
from visual_reco.colour import colour_vector
from visual_reco.embedders import get_embedder
from visual_reco.embedders.base import Embedder, l2_normalise
from visual_reco.fields import ImageEmbeddingField
from visual_reco.inline_storage import inline_columns
from visual_reco.preprocessing import fit_square
from visual_reco.registry import embedded_models, embedding_fields, get_embedding_field


def rgb(path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


# --- the aspects module ---------------------------------------------------------------------


def test_colour_is_an_aspect_with_the_colour_modules_size_and_version():
    aspect = get_aspect("colour")
    assert aspect.dimensions == colour.DIMENSIONS == 112
    assert aspect.version == str(colour.VERSION)
    assert signature(["colour"]) == f"+colour.{colour.VERSION}"
    assert signature([]) == ""
    with pytest.raises(ValueError, match="Unknown aspect 'shape'"):
        get_aspect("shape")


def test_compute_aspects_gives_one_row_per_prepared_image(photos):
    prepared = [fit_square(rgb(p.path), 299) for p in photos[:3]]
    found = compute_aspects(np.stack(prepared), ["colour"])
    assert set(found) == {"colour"} and found["colour"].shape == (3, 112)
    assert found["colour"].dtype == np.float32
    for row, pixels in zip(found["colour"], prepared, strict=True):
        np.testing.assert_array_equal(row, colour_vector(pixels))
    assert compute_aspects([], ["colour"])["colour"].shape == (0, 112)
    assert compute_aspects(prepared, []) == {}


# --- the field: columns, index, deconstruct, fingerprint, state ----------------------------


def test_the_field_adds_a_colour_column_and_its_hnsw_index():
    field = get_embedding_field(Item)
    assert field.aspects == ("colour",) and field.colour_name == "embedding_colour"
    column = Item._meta.get_field("embedding_colour")
    assert isinstance(column, HalfVectorField) and column.dimensions == 112
    assert column.null and not column.editable
    (index,) = [i for i in Item._meta.indexes if i.fields == ["embedding_colour"]]
    (main,) = [i for i in Item._meta.indexes if i.fields == ["embedding"]]
    assert index.opclasses == ["halfvec_cosine_ops"] and index.name != main.name
    assert (index.m, index.ef_construction) == (main.m, main.ef_construction)
    assert {"embedding_colour"} <= {f.name for f in ItemImage._meta.fields}


def test_aspects_off_means_no_column_and_no_index():
    detail = get_embedding_field(Look, "detail_embedding")
    photo = get_embedding_field(Look, "photo_embedding")  # from the abstract base: default
    assert detail.aspects == () and photo.aspects == ("colour",)
    names = {f.name for f in Look._meta.fields}
    assert "photo_embedding_colour" in names and "detail_embedding_colour" not in names
    assert not [i for i in Look._meta.indexes if i.fields == ["detail_embedding_colour"]]
    with pytest.raises(ValueError, match="no aspect 'colour'"):
        _ = detail.colour_name
    assert detail.state(EmbeddingStatus.PENDING).keys() == {
        "detail_embedding", "detail_embedding_status", "detail_embedding_error",
        "detail_embedding_fingerprint", "detail_embedding_updated_at"}


def test_deconstruct_writes_aspects_only_when_not_the_default():
    *_, kwargs = get_embedding_field(Item).deconstruct()
    assert "aspects" not in kwargs and kwargs["with_companions"] is False
    *_, kwargs = get_embedding_field(Look, "detail_embedding").deconstruct()
    assert kwargs["aspects"] == ()
    rebuilt = ImageEmbeddingField(**kwargs)
    assert rebuilt.aspects == () and not rebuilt.with_companions


def test_unknown_or_misspelt_aspects_fail_where_the_model_is_defined():
    with pytest.raises(ValueError, match="Unknown aspect 'color'"):
        ImageEmbeddingField(source="photo", aspects=("color",))
    with pytest.raises(ValueError, match="sequence of names"):
        ImageEmbeddingField(source="photo", aspects="colour")


def test_the_fingerprint_names_the_aspect_versions():
    embedder = get_embedder()
    item = get_embedding_field(Item)
    assert item.fingerprint_for(embedder) == f"{embedder.fingerprint}+colour.{colour.VERSION}"
    assert get_embedding_field(Look, "detail_embedding").fingerprint_for(embedder) == (
        embedder.fingerprint)
    column = Item._meta.get_field(item.fingerprint_name)
    assert len(item.fingerprint_for(embedder)) <= column.max_length


def test_state_writes_and_clears_the_colour_with_the_vector():
    field = get_embedding_field(Item)
    colour_values = np.full(112, 112 ** -0.5, dtype=np.float32)
    ready = field.state(EmbeddingStatus.READY, vector=np.ones(2048), fingerprint="f",
                        aspect_vectors={"colour": colour_values})
    assert ready["embedding_colour"] is colour_values
    for cleared in (field.state(EmbeddingStatus.PENDING),
                    field.state(EmbeddingStatus.FAILED, fingerprint="f", error="bad"),
                    field.state(EmbeddingStatus.READY, vector=np.ones(2048))):
        assert cleared["embedding_colour"] is None
    kept = field.state(EmbeddingStatus.STALE, keep_vector=True)
    assert "embedding_colour" not in kept and "embedding" not in kept


@pytest.mark.django_db
def test_the_database_has_the_colour_column_inline_and_its_index():
    with connection.cursor() as cursor:
        cursor.execute("SELECT attname, format_type(atttypid, atttypmod), attstorage "
                       "FROM pg_attribute WHERE attrelid = 'testapp_look'::regclass "
                       "AND attname LIKE '%%_colour'")
        assert cursor.fetchall() == [("photo_embedding_colour", "halfvec(112)", "p")]
        cursor.execute("SELECT indexdef FROM pg_indexes WHERE tablename = 'testapp_item' "
                       "AND indexdef LIKE '%%(embedding_colour halfvec_cosine_ops)%%'")
        (indexdef,) = cursor.fetchone()
    assert "USING hnsw" in indexdef and "m='16'" in indexdef
    # A 4 kB PLAIN vector keeps every row over the TOAST threshold: without PLAIN of its own
    # the 232-byte colour would be moved out of line.
    assert inline_columns()["testapp_look"] == ["photo_embedding", "photo_embedding_colour"]


# --- embedders ------------------------------------------------------------------------------


class MeanColourEmbedder(Embedder):
    """A third-party embedder with no `prepare` of its own: its vector is the mean colour."""

    fingerprint = "mean-colour:1"
    dimensions = 3

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        means = [np.asarray(image, dtype=np.float32).reshape(-1, 3).mean(axis=0)
                 for image in images]
        return l2_normalise(np.array(means).reshape(-1, 3))


def test_the_default_embed_with_aspects_prepares_images_itself(photos):
    embedder = MeanColourEmbedder()
    images = [rgb(p.path) for p in photos[:2]]
    vectors, aspects = embedder.embed_with_aspects(images, ("colour",))
    np.testing.assert_array_equal(vectors, embedder.embed(images))
    expected = [colour_vector(fit_square(image, 299)) for image in images]
    np.testing.assert_array_equal(aspects["colour"], expected)
    assert embedder.embed_with_aspects(images, ())[1] == {}


def test_keras_aspects_come_from_the_arrays_the_model_sees_in_order(photos):
    """The colour of each image is that of `prepare(image)`, through batches of 3, 3 and 1
    (the next batch is prepared while the model runs), and the vectors are `embed`'s."""
    embedder = get_embedder()
    images = [rgb(p.path) for p in photos[:7]]
    original = embedder.batch_size
    try:
        embedder.batch_size = 3
        vectors, aspects = embedder.embed_with_aspects(images, ("colour",))
        plain = embedder.embed(images)
    finally:
        embedder.batch_size = original
    np.testing.assert_allclose(vectors, plain, atol=2e-4)
    expected = np.stack([colour_vector(embedder.prepare(image)) for image in images])
    np.testing.assert_array_equal(aspects["colour"], expected)
    np.testing.assert_allclose(np.linalg.norm(aspects["colour"], axis=1), 1.0, atol=1e-5)
    empty_vectors, empty = embedder.embed_with_aspects([], ("colour",))
    assert empty_vectors.shape == (0, 2048) and empty["colour"].shape == (0, 112)


# --- checks ---------------------------------------------------------------------------------


class LongFingerprintEmbedder(MeanColourEmbedder):
    """An embedder whose fingerprint, with the colour version, overflows 128 characters."""

    fingerprint = "x" * 125
    dimensions = 2048


def test_a_fingerprint_too_long_for_its_column_is_an_error(settings):
    assert [e for e in checks.run_checks(tags=[checks.Tags.models])
            if e.id.startswith("visual_reco")] == []
    settings.VISUAL_RECO = {**settings.VISUAL_RECO, "EMBEDDER": {
        "BACKEND": "tests.test_aspects.LongFingerprintEmbedder"}}
    errors = [e for e in checks.run_checks(tags=[checks.Tags.models])
              if e.id.startswith("visual_reco")]
    with_colour = [f for m in embedded_models() for f in embedding_fields(m)
                   if f.model is m and f.aspects]
    assert [e.id for e in errors] == ["visual_reco.E008"] * len(with_colour)
    assert {e.obj for e in errors} == set(with_colour)
    assert "134 characters" in errors[0].msg
