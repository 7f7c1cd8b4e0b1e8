"""Changing the embedder without downtime, with two real embedders and a real worker: the
default Xception (299 pixels) and the same network seeing 256 pixels (another fingerprint,
the same 2,048 dimensions), both in tests/settings.py's ``EMBEDDERS``."""

import io
import time
from datetime import timedelta

import numpy as np
import pytest
from django.core import checks
from django.core.management import CommandError, call_command
from django.db import transaction
from django.utils import timezone

from tests.conftest import EMBED_TIMEOUT, upload, wait_for_status
from tests.test_surfaces import render
from tests.testapp.models import Item, Look
from visual_reco import model_switch
from visual_reco.conf import reco_settings
from visual_reco.embedders import get_embedder
from visual_reco.feedback.tokens import read
from visual_reco.images import open_image
from visual_reco.jobs import sweep
from visual_reco.models import EmbedderRollout, EmbeddingShadow, EmbeddingStatus
from visual_reco.query import vector_of
from visual_reco.registry import get_embedding_field
from visual_reco.rollout import field_key, live_embedder
from visual_reco.tasks import warm_models

pytestmark = pytest.mark.django_db(transaction=True)
CANDIDATE = "xception_256"
DONE = {EmbeddingStatus.READY, EmbeddingStatus.FAILED}


def _command(*args: str) -> str:
    out = io.StringIO()
    call_command("visual_reco_model_switch", *args, "--model", "testapp.Item", stdout=out)
    return out.getvalue()


def _wait_for_coverage(field, alias: str) -> model_switch.Coverage:
    deadline = time.monotonic() + EMBED_TIMEOUT
    while not (found := model_switch.coverage(field, alias)).complete:
        if time.monotonic() > deadline:
            pytest.fail(f"{alias} still covers only {found} after {EMBED_TIMEOUT}s")
        time.sleep(0.25)
    return found


def _live() -> dict[int, tuple[str, np.ndarray]]:
    return {item.pk: (item.embedding_fingerprint, vector_of(item))
            for item in Item.objects.order_by("pk")}


def _embed_here(alias: str, path) -> np.ndarray:
    with open(path, "rb") as handle:
        return get_embedder(alias).embed([open_image(handle)])[0]


@pytest.mark.worker
def test_roll_out_switch_and_roll_back(celery_worker, photos):
    field = get_embedding_field(Item)
    old_fp = field.fingerprint_for(get_embedder("default"))
    new_fp = field.fingerprint_for(get_embedder(CANDIDATE))
    assert old_fp != new_fp
    with transaction.atomic():
        items = [Item.objects.create(name=p.label, photo=upload(p.path)) for p in photos[:4]]
    for item in items:
        assert wait_for_status(item, DONE).embedding_status == EmbeddingStatus.READY
    before = _live()
    assert {fp for fp, _ in before.values()} == {old_fp}

    assert "queued 4 rows" in _command("start", "--embedder", CANDIDATE)
    assert _wait_for_coverage(field, CANDIDATE).total == 4
    assert _live().keys() == before.keys()
    assert all(fp == before[pk][0] and np.array_equal(vector, before[pk][1])
               for pk, (fp, vector) in _live().items())  # the column kept serving, untouched
    assert live_embedder(field) == "default"

    # An upload during the rollout: until its task runs, the rollout is not complete.
    with transaction.atomic():
        new = Item.objects.create(name="new", photo=upload(photos[4].path))
        assert "4/5 rows (80.0%)" in _command("status")
        out = io.StringIO()
        call_command("visual_reco_status", stdout=out)
        assert f"rollout: testapp.Item.embedding: live default ({old_fp}); shadow " \
               f"{CANDIDATE} ({new_fp}): 4/5 rows" in out.getvalue()
        with pytest.raises(CommandError, match="covers 4/5"):
            _command("switch")
    assert _wait_for_coverage(field, CANDIDATE).total == 5
    new = wait_for_status(new, DONE)
    assert new.embedding_fingerprint == old_fp  # both vectors: the live one too
    before = _live()

    assert new_fp in _command("switch")
    after = _live()
    assert {fp for fp, _ in after.values()} == {new_fp}
    assert live_embedder(field) == CANDIDATE
    for item, photo in zip([*items, new], photos[:5], strict=True):
        assert float(after[item.pk][1] @ _embed_here(CANDIDATE, photo.path)) > 0.999
    # Searches embed the photo with the live embedder: the same photo scores 1, where the
    # default embedder's vector of it would not.
    with open(photos[2].path, "rb") as handle:
        found = list(Item.objects.similar_to_image(handle, limit=5))
    assert found[0].pk == items[2].pk and found[0].visual_score > 0.999
    assert {row.embedding_fingerprint for row in found} == {new_fp}
    assert float(after[items[2].pk][1] @ _embed_here("default", photos[2].path)) < 0.99

    # After the switch, uploads get the previous embedder's vector too, for a rollback.
    late = wait_for_status(Item.objects.create(name="late", photo=upload(photos[5].path)),
                           DONE)
    assert late.embedding_fingerprint == new_fp
    assert _wait_for_coverage(field, "default").total == 6

    assert old_fp in _command("rollback")
    back = _live()
    assert {fp for fp, _ in back.values()} == {old_fp}
    assert all(np.array_equal(back[pk][1], vector) for pk, (_, vector) in before.items())
    assert float(back[late.pk][1] @ _embed_here("default", photos[5].path)) > 0.999
    assert live_embedder(field) == "default"
    with pytest.raises(CommandError, match="Nothing to roll back"):
        _command("rollback")

    _command("finish")
    assert not EmbedderRollout.objects.exists() and not EmbeddingShadow.objects.exists()


def test_an_embedder_of_another_size_needs_a_migration():
    with pytest.raises(CommandError, match=r"1280-dimension vectors.*stores 2048.*migration"):
        _command("start", "--embedder", "mobilenet")
    with pytest.raises(CommandError, match="No embedder 'nope'"):
        _command("start", "--embedder", "nope")
    with pytest.raises(CommandError, match="the column holds already"):
        _command("start", "--embedder", "default")
    assert not EmbedderRollout.objects.exists()


def test_switch_and_rollback_need_a_rollout():
    with pytest.raises(CommandError, match="No embedder is being rolled out"):
        _command("switch")
    Item.objects.create(name="cup")  # no image: nothing to embed
    _command("start", "--embedder", CANDIDATE)
    with pytest.raises(CommandError, match="Nothing to roll back"):
        _command("rollback")
    with pytest.raises(CommandError, match="is being rolled out: finish it first"):
        _command("start", "--embedder", "default")
    _command("finish")
    assert not EmbedderRollout.objects.exists()


def test_a_rollout_of_an_alias_no_longer_configured_is_reported():
    field = get_embedding_field(Item)
    EmbedderRollout.objects.create(**field_key(field), live="gone", shadow="default",
                                   started_at=timezone.now())
    found = [message for message in checks.run_checks(tags=[checks.Tags.database],
                                                      databases=["default"])
             if message.id == "visual_reco.E011"]
    assert [m.msg for m in found] == ["testapp.item.embedding: its live embedder 'gone' "
                                      "(visual_reco_model_switch) is not in "
                                      "VISUAL_RECO['EMBEDDERS']."]


def test_a_field_without_aspects_switches_and_rolls_back():
    """The second field of a model, without aspect columns; vectors written here, as if
    the workers had (no model runs: the switch copies vectors, it computes none)."""
    field = get_embedding_field(Look, "detail_embedding")
    old_fp = field.fingerprint_for(get_embedder("default"))
    new_fp = field.fingerprint_for(get_embedder(CANDIDATE))
    rng = np.random.default_rng(0)
    old, new = rng.random((2, 3, 2048)).astype(np.float16).astype(np.float32)
    looks = [Look.objects.create(name=f"look {i}") for i in range(4)]  # the 4th: no image
    for look, vector in zip(looks, old, strict=False):
        Look.objects.filter(pk=look.pk).update(detail=f"looks/{look.pk}.jpg", **field.state(
            EmbeddingStatus.READY, vector=vector, fingerprint=old_fp))
    EmbedderRollout.objects.create(**field_key(field), live="default", shadow=CANDIDATE,
                                   started_at=timezone.now())
    for look, vector in zip(looks[:2], new, strict=False):
        EmbeddingShadow.objects.create(**field_key(field), object_id=str(look.pk),
                                       fingerprint=new_fp, source=f"looks/{look.pk}.jpg",
                                       vector=vector)
    # The third row's image could not be embedded by the candidate: it switches as failed.
    EmbeddingShadow.objects.create(**field_key(field), object_id=str(looks[2].pk),
                                   fingerprint=new_fp, source=f"looks/{looks[2].pk}.jpg",
                                   error="broken")

    model_switch.switch(field)
    rows = {look.pk: look for look in Look.objects.all()}
    for look, vector in zip(looks[:2], new, strict=False):
        assert np.array_equal(vector_of(rows[look.pk], "detail_embedding"), vector)
        assert rows[look.pk].detail_embedding_status == EmbeddingStatus.READY
    assert rows[looks[2].pk].detail_embedding_status == EmbeddingStatus.FAILED
    assert rows[looks[2].pk].detail_embedding is None
    assert rows[looks[2].pk].detail_embedding_error == "broken"
    assert {r.detail_embedding_fingerprint for r in rows.values() if r.detail} == {new_fp}
    assert rows[looks[3].pk].detail_embedding_status == EmbeddingStatus.NO_IMAGE

    model_switch.rollback(field)
    rows = {look.pk: look for look in Look.objects.all()}
    for look, vector in zip(looks, old, strict=False):
        assert np.array_equal(vector_of(rows[look.pk], "detail_embedding"), vector)
        assert rows[look.pk].detail_embedding_fingerprint == old_fp
        assert rows[look.pk].detail_embedding_status == EmbeddingStatus.READY


def _backdate_fill(field) -> None:
    """As if the rollout's missing rows were queued longer than ``SWEEP_GRACE`` ago."""
    EmbedderRollout.objects.filter(**field_key(field)).update(
        filled_at=timezone.now() - timedelta(seconds=reco_settings.SWEEP_GRACE + 1))


@pytest.mark.worker
def test_the_sweep_queues_shadow_vectors_that_went_missing(celery_worker, photos):
    field = get_embedding_field(Item)
    with transaction.atomic():
        items = [Item.objects.create(name=p.label, photo=upload(p.path)) for p in photos[:2]]
    for item in items:
        assert wait_for_status(item, DONE).embedding_status == EmbeddingStatus.READY
    _command("start", "--embedder", CANDIDATE)
    _wait_for_coverage(field, CANDIDATE)
    # A task lost with its worker: one row's shadow vector never arrived.
    EmbeddingShadow.objects.filter(object_id=str(items[0].pk)).delete()
    assert str(model_switch.coverage(field, CANDIDATE)) == "1/2 rows (50.0%)"
    assert sweep()["testapp.Item"].queued == 0  # `start` queued it a moment ago
    _backdate_fill(field)
    assert sweep()["testapp.Item"].queued == 1
    assert sweep()["testapp.Item"].queued == 0  # queued again: left alone for the grace
    assert _wait_for_coverage(field, CANDIDATE).done == 2
    _command("finish")


def test_the_sweep_leaves_rows_waiting_for_their_live_vector_to_their_task():
    """A pending row's own task embeds both vectors: the shadow refill does not queue it
    a second time (the sweep's counts say what it sent)."""
    field = get_embedding_field(Look, "detail_embedding")
    looks = [Look.objects.create(name=f"look {i}") for i in range(3)]
    status = [EmbeddingStatus.READY, EmbeddingStatus.READY, EmbeddingStatus.PENDING]
    for look, state in zip(looks, status, strict=True):
        Look.objects.filter(pk=look.pk).update(detail=f"looks/{look.pk}.jpg", **field.state(
            state, fingerprint=field.fingerprint_for(get_embedder("default")),
            at=timezone.now()))
    EmbedderRollout.objects.create(**field_key(field), live="default", shadow=CANDIDATE,
                                   started_at=timezone.now())
    assert sweep()["testapp.Look"].queued == 2  # the pending row was queued a moment ago
    assert sweep()["testapp.Look"].queued == 0  # and the two: left alone for the grace


def test_warm_up_loads_the_live_and_the_shadow_embedders():
    """After a switch the workers' first task finds the live model loaded, and during a
    rollout the shadow one too."""
    EmbedderRollout.objects.create(**field_key(get_embedding_field(Item)), live=CANDIDATE,
                                   shadow="default", started_at=timezone.now())
    assert warm_models() == ["default", CANDIDATE]


def test_tokens_record_the_live_embedders_fingerprint(client, items):
    """After a switch the served lists are ranked by the live embedder's vectors: their
    tokens (and so the events credited to them) say so."""
    field = get_embedding_field(Item)
    EmbedderRollout.objects.create(**field_key(field), live=CANDIDATE, shadow="default",
                                   started_at=timezone.now(), switched_at=timezone.now())
    live = get_embedder(CANDIDATE).fingerprint.rsplit(":", 1)[-1][:12]
    assert live != get_embedder("default").fingerprint.rsplit(":", 1)[-1][:12]
    client.cookies["vr_vid"] = "visitor-id-0123456789abcdef"
    body = client.get(f"/api/visual-reco/products/{items[0].pk}/similar/?limit=3").json()
    assert read(body["token"]).fingerprint == live
    html = render("{% visually_similar item limit=3 %}", item=items[0])
    assert read(html.split('data-vr-token="', 1)[1].split('"', 1)[0]).fingerprint == live


def test_a_deleted_rows_shadow_vectors_go_with_it():
    field = get_embedding_field(Look, "detail_embedding")
    new_fp = field.fingerprint_for(get_embedder(CANDIDATE))
    looks = [Look.objects.create(name=f"look {i}") for i in range(3)]
    for look in looks:
        Look.objects.filter(pk=look.pk).update(detail=f"looks/{look.pk}.jpg", **field.state(
            EmbeddingStatus.READY, vector=np.ones(2048, dtype=np.float32) / 2048 ** 0.5,
            fingerprint=field.fingerprint_for(get_embedder("default"))))
    EmbedderRollout.objects.create(**field_key(field), live="default", shadow=CANDIDATE,
                                   started_at=timezone.now())
    for look in looks:
        for fingerprint in (new_fp, "an older one"):
            EmbeddingShadow.objects.create(**field_key(field), object_id=str(look.pk),
                                           fingerprint=fingerprint,
                                           source=f"looks/{look.pk}.jpg", error="x")
    gone = str(looks[0].pk)
    with transaction.atomic():
        Look.objects.get(pk=gone).delete()
        assert not EmbeddingShadow.objects.filter(object_id=gone).exists()
        transaction.set_rollback(True)  # kept when the delete is rolled back
    assert EmbeddingShadow.objects.filter(object_id=gone).count() == 2
    looks[0].delete()
    assert not EmbeddingShadow.objects.filter(object_id=gone).exists()
    assert EmbeddingShadow.objects.count() == 4
    found = model_switch.coverage(field, CANDIDATE)
    assert (found.done, found.total) == (2, 2)
