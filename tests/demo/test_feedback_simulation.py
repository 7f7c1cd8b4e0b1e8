"""The feedback simulation of docs/FEEDBACK.md, tiny, end to end: simulated visitors on the 18
kitchenware photos (embedded by the real embedder) through the real similar API, events API,
``record()`` and roll-up, then the report with its plot."""

from __future__ import annotations

import numpy as np
import pytest
from django.test.utils import override_settings

from demo_shop.bench.feedback_sim import (
    SIMILAR_SURFACE,
    Catalog,
    Options,
    Report,
    event_counts,
    lift,
    rollup_counts,
    run_scenario,
    simulation_settings,
    summarize,
)
from tests.conftest import upload
from visual_reco.choices import EmbeddingStatus
from visual_reco.evaluation.embedding import embed_paths

VARIANTS = {"visual": {"RERANK": False}, "reranked": {"RERANK": True}}
FAMILIES = ["blue", "warm", "neutral"]


@pytest.fixture(scope="module")
def embedded(photos):
    found = embed_paths([photo.path for photo in photos], progress=False)
    assert not found.errors
    return found.vectors


@pytest.fixture
def catalog(photos, embedded):
    from tests.testapp.models import Item

    pks = []
    for index, photo in enumerate(photos):
        item = Item.objects.create(name=f"{photo.label} {photo.ident}", category=photo.label,
                                   photo=upload(photo.path))
        Item.objects.filter(pk=item.pk).update(embedding=embedded[index],
                                               embedding_status=EmbeddingStatus.READY)
        pks.append(str(item.pk))
    return Catalog(pks, embedded.astype(np.float64), [photo.label for photo in photos],
                   [FAMILIES[i % len(FAMILIES)] for i in range(len(photos))])


@pytest.mark.django_db
@pytest.mark.parametrize("scenario", ["looks", "unrelated"])
def test_a_tiny_simulation_goes_through_the_real_path(catalog, scenario, tmp_path):
    rounds = []
    options = Options(scenario=scenario, sessions=30, rounds=2, seed=5, limit=4,
                      after_round=rounds.append)
    with override_settings(VISUAL_RECO=simulation_settings(VARIANTS, {}, {})):
        result = run_scenario(catalog, options)
        again = run_scenario(catalog, options)  # tables emptied first, same visitors
    assert rounds == [1, 2, 1, 2]
    logs = result["logs"]
    assert len(logs) == 30 and {log.round for log in logs} == {1, 2}
    # Both variants were assigned by the real A/B code, each visit to one for good.
    assert {log.surfaces[SIMILAR_SURFACE].variant for log in logs} == set(VARIANTS)
    assert [log.surfaces[SIMILAR_SURFACE].variant for log in again["logs"]] == \
        [log.surfaces[SIMILAR_SURFACE].variant for log in logs]
    # What the simulator did is what the events table holds, and what the roll-up counted.
    stored = event_counts()
    for (surface, variant), counts in again["counts"].items():
        assert stored[(surface, variant, "impression")] == counts["impressions"] > 0
        assert stored.get((surface, variant, "click"), 0) == counts["clicks"]
        assert stored.get((surface, variant, "purchase"), 0) == counts["purchases"]
    assert result["agrees"] and again["agrees"]
    assert rollup_counts() == again["counts"]
    assert sum(c["clicks"] for c in again["counts"].values()) > 0
    # CTR per variant with an interval around it.
    rows = summarize(logs, SIMILAR_SURFACE)
    for name, row in rows.items():
        lists = sum(log.surfaces[SIMILAR_SURFACE].lists for log in logs
                    if log.surfaces[SIMILAR_SURFACE].variant == name)
        assert row.impressions == 4 * lists
        assert 0 < row.ctr < 1 and row.ctr_ci.low <= row.ctr <= row.ctr_ci.high
    gain = lift(rows["reranked"], rows["visual"])
    assert gain.low <= gain.value <= gain.high

    out = tmp_path / "FEEDBACK.md"
    Report({scenario: result}, {"sessions": 30, "rounds": 2, "seed": 5}, ["a note"],
           len(catalog), 1.0, VARIANTS, out, command="test").write()
    text = out.read_text()
    assert "| 2 | reranked |" in text and "a note" in text
    assert (tmp_path / "feedback_ctr.png").stat().st_size > 0
