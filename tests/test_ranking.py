"""The re-ranking arithmetic: the prior, position debiasing, exploration, and the exact
visual order when there is no feedback."""

import warnings

import numpy as np
import pytest

from visual_reco.feedback.ranking import (
    MIN_EXAMINATION,
    Evidence,
    Prior,
    debiased_views,
    examination,
    feedback_terms,
    rerank,
    smoothed,
)

PRIOR = Prior(ctr=0.05, conversion=0.1, strength=50.0)
VISUAL = [0.90, 0.88, 0.86, 0.84, 0.82, 0.80, 0.78, 0.76, 0.74, 0.72, 0.70, 0.68]


def test_without_feedback_the_order_is_the_visual_order_exactly():
    visual = [0.5, 0.9, 0.7, 0.9, 0.1]
    nothing = [Evidence()] * len(visual)
    for share in (0.0, 0.5):
        assert rerank(visual, nothing, PRIOR, 4, explore_share=share,
                      rng=np.random.default_rng(1)) == [1, 3, 2, 0]
    assert list(feedback_terms(nothing, PRIOR)) == [0.0] * 5


def test_the_prior_keeps_one_lucky_click_from_jumping_the_queue():
    lucky = Evidence(pair_views=2, pair_clicks=1, target_views=2, target_clicks=1)
    evidence = [Evidence(), Evidence(), lucky]
    assert rerank([0.90, 0.86, 0.80], evidence, PRIOR, 3) == [0, 1, 2]
    proven = Evidence(pair_views=400, pair_clicks=200, target_views=400, target_clicks=200)
    assert rerank([0.90, 0.86, 0.80], [Evidence(), Evidence(), proven], PRIOR, 3)[0] == 2


def test_a_pair_rate_is_shrunk_towards_its_targets_rate():
    # Same pair evidence; the target that does well everywhere gets more of the benefit.
    pair = dict(pair_views=20, pair_clicks=4)
    strong = Evidence(**pair, target_views=5000, target_clicks=500, target_conversions=50)
    weak = Evidence(**pair, target_views=5000, target_clicks=50, target_conversions=5)
    good, poor = feedback_terms([strong, weak], PRIOR)
    assert good > poor
    assert smoothed(4, 20, 0.1, 50) == pytest.approx((4 + 5) / 70)


def test_examination_is_one_at_the_top_non_increasing_and_floored():
    propensity = examination([1000, 1000, 1000, 1000], [100, 50, 25, 0])
    assert propensity[0] == 1.0
    assert np.all(np.diff(propensity) <= 0) and propensity.min() >= MIN_EXAMINATION
    assert propensity[1] == pytest.approx(0.5, abs=0.05)
    assert list(examination([], [])) == [] and list(examination([0, 0], [0, 0])) == [1, 1]
    # Three lucky clicks in three views at position 2 do not make it look examined more
    # than position 1 (at most 1), nor anywhere near 10 times as often.
    thin = examination([1000, 3], [100, 3])
    assert MIN_EXAMINATION <= thin[1] <= 1.0


def test_clicks_low_in_the_list_count_for_more_than_the_same_clicks_at_the_top():
    propensity = examination([1000] * 8, [120, 90, 70, 55, 45, 38, 33, 30])
    top = Evidence(pair_views=debiased_views({1: 200}, propensity), pair_clicks=10,
                   target_views=debiased_views({1: 200}, propensity), target_clicks=10)
    low = Evidence(pair_views=debiased_views({8: 200}, propensity), pair_clicks=10,
                   target_views=debiased_views({8: 200}, propensity), target_clicks=10)
    assert low.pair_views < top.pair_views
    assert rerank([0.8, 0.8], [top, low], PRIOR, 2) == [1, 0]


def test_exploration_takes_at_most_its_share_of_the_slots_and_shows_new_products():
    seen = Evidence(pair_views=500, pair_clicks=25, target_views=500, target_clicks=25)
    evidence = [seen] * 8 + [Evidence()] * 4  # four products nobody has seen yet
    exploit = rerank(VISUAL, evidence, PRIOR, 8)
    shown_new = 0
    for seed in range(200):
        explored = rerank(VISUAL, evidence, PRIOR, 8, explore_share=0.25,
                          rng=np.random.default_rng(seed))
        assert explored[:6] == exploit[:6] and len(explored) == len(set(explored)) == 8
        shown_new += any(index >= 8 for index in explored)
    assert 0 < shown_new < 200  # new products get seen, not always
    again = rerank(VISUAL, evidence, PRIOR, 8, explore_share=0.25,
                   rng=np.random.default_rng(7))
    assert again == rerank(VISUAL, evidence, PRIOR, 8, explore_share=0.25,
                           rng=np.random.default_rng(7))


def test_exploration_copes_with_more_clicks_than_examined_views():
    # Clicks at rarely examined positions: more clicks than debiased views.
    hot = Evidence(pair_views=1, pair_clicks=100, target_views=2, target_clicks=200)
    evidence = [Evidence(pair_views=100, pair_clicks=5, target_views=100, target_clicks=5),
                Evidence(), hot, hot]
    for seed in range(20):
        shown = rerank([0.9, 0.8, 0.7, 0.6], evidence, PRIOR, 2, explore_share=0.5,
                       rng=np.random.default_rng(seed))
        assert len(shown) == 2 and len(set(shown)) == 2


def test_a_sampled_click_rate_of_zero_ranks_last_without_a_warning():
    # A product shown a million times and never clicked: its Beta draw is exactly 0.0 in
    # floating point most of the time (alpha ~1e-4), and ln(0) is -inf with a RuntimeWarning.
    ignored = Evidence(pair_views=1e6, target_views=1e6)
    seen = Evidence(pair_views=100, pair_clicks=5, target_views=100, target_clicks=5)
    evidence = [seen, seen, ignored, Evidence()]
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        for seed in range(20):
            shown = rerank([0.9, 0.8, 0.7, 0.6], evidence, PRIOR, 3, explore_share=0.34,
                           rng=np.random.default_rng(seed))
            assert shown == [0, 1, 3]  # the explored slot goes to the product nobody saw
