"""Threshold rules on synthetic score sets whose answers are known."""

from __future__ import annotations

import math

import msgspec
import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import f1_score, roc_auc_score

from calibrate import rules


def test_min_good_samples_for_one_per_mille_at_95_percent():
    # (1 - 0.001)^n <= 0.05  <=>  n >= ln(0.05) / ln(0.999) = 2994.2
    assert rules.min_good_samples(0.001, 0.95) == 2995
    assert rules.min_good_samples(0.01, 0.95) == 299
    assert rules.min_good_samples(0.05, 0.99) == 90
    assert 0.999**2995 <= 0.05 < 0.999**2994


def test_order_statistic_is_the_maximum_at_2995_and_refused_at_2994():
    rng = np.random.default_rng(1)
    good = rng.gamma(2.0, 1.0, 2995)
    choice = rules.order_statistic_threshold(good, 0.001, 0.95)
    assert choice is not None and choice.threshold == good.max()
    assert "1st largest of 2995" in choice.detail
    assert rules.order_statistic_threshold(good[:2994], 0.001, 0.95) is None


def test_order_statistic_with_100_samples_is_refused_and_says_what_is_supported():
    assert rules.order_statistic_threshold(np.arange(100.0), 0.001, 0.95) is None
    lowest = rules.lowest_supported_target(100, 0.95)
    assert lowest == pytest.approx(1 - 0.05 ** (1 / 100))  # 0.0295
    assert rules.order_statistic_threshold(np.arange(100.0), lowest * 1.0001, 0.95).threshold == 99.0


def test_order_statistic_rank_by_hand_for_10000_samples():
    # X ~ Bin(10000, 0.001): P(X <= 4) = 0.0291 <= 0.05 < P(X <= 5) = 0.0669, so k - 1 = 4.
    assert stats.binom.cdf(4, 10000, 0.001) <= 0.05 < stats.binom.cdf(5, 10000, 0.001)
    assert rules.order_statistic_rank(10000, 0.001, 0.95) == 5
    scores = np.arange(10000.0)
    rng = np.random.default_rng(0)
    rng.shuffle(scores)
    assert rules.order_statistic_threshold(scores, 0.001, 0.95).threshold == 9995.0  # the 5th largest


def test_order_statistic_bound_holds_in_repeated_trials():
    """The rule's promise: P(true false-reject rate > target) <= 1 - confidence, whatever the distribution."""
    rng = np.random.default_rng(7)
    n, target, confidence, trials = 400, 0.02, 0.9, 4000
    k = rules.order_statistic_rank(n, target, confidence)
    u = np.sort(rng.random((trials, n)), axis=1)[:, n - k]  # the k-th largest of uniforms
    true_frr = 1 - u  # for uniform scores P(score > t) = 1 - t
    violated = np.mean(true_frr > target)
    assert violated <= (1 - confidence) + 3 * math.sqrt(0.1 * 0.9 / trials)
    # ... and the rule is not wastefully conservative: one rank lower would break it.
    u_next = np.sort(rng.random((trials, n)), axis=1)[:, n - k - 1]
    assert np.mean(1 - u_next > target) > (1 - confidence) - 3 * math.sqrt(0.1 * 0.9 / trials)


def test_clopper_pearson_upper_of_the_chosen_threshold_is_within_target():
    good = np.random.default_rng(3).normal(size=5000)
    choice = rules.order_statistic_threshold(good, 0.002, 0.95)
    fr = rules.false_rejects(good, choice.threshold)
    assert fr == rules.order_statistic_rank(5000, 0.002, 0.95) - 1
    assert rules.clopper_pearson_upper(fr, good.size, 0.95) <= 0.002


def test_clopper_pearson_known_values():
    assert rules.clopper_pearson_upper(0, 2995, 0.95) == pytest.approx(1 - 0.05 ** (1 / 2995), rel=1e-9)
    assert rules.clopper_pearson_upper(0, 100, 0.95) == pytest.approx(0.0295, abs=1e-4)  # "rule of three"
    assert rules.clopper_pearson_upper(5, 5, 0.95) == 1.0
    ev = rules.rate_evidence(2, 40, 0.95, in_sample=True)
    assert (ev.events, ev.trials, ev.rate, ev.in_sample) == (2, 40, 0.05, True)
    assert stats.binom.cdf(2, 40, ev.upper) == pytest.approx(0.05, abs=1e-9)


def test_tail_extrapolation_on_exponential_scores_is_close_and_never_below_the_max():
    rng = np.random.default_rng(5)
    good = 1.0 + rng.exponential(0.5, 2000)  # scale error ~0.025, x ln(0.2 / 1e-4) = 0.19
    choice = rules.tail_threshold(good, 0.0001)
    true = 1.0 + 0.5 * math.log(1 / 0.0001)  # exact quantile of the generating distribution: 5.61
    assert choice.method == "tail-extrapolation" and "EXTRAPOLATED" in choice.detail
    assert abs(choice.threshold - true) < 0.6
    assert choice.threshold >= good.max()
    with pytest.raises(ValueError, match="at least 10"):
        rules.tail_threshold(good[:5], 0.001)


def test_best_f1_on_separated_scores_sits_halfway_in_the_gap():
    good = np.array([0.1, 0.2, 0.3, 0.4])
    defect = np.array([0.8, 0.9, 1.0])
    choice, f1 = rules.best_f1_threshold(good, defect)
    assert f1 == 1.0 and choice.threshold == pytest.approx(0.6)


def test_best_f1_matches_sklearn_on_overlapping_scores():
    rng = np.random.default_rng(2)
    good, defect = rng.normal(0, 1, 300), rng.normal(1.5, 1, 60)
    choice, f1 = rules.best_f1_threshold(good, defect)
    y = np.r_[np.zeros(300), np.ones(60)]
    s = np.r_[good, defect]
    assert f1 == pytest.approx(f1_score(y, s > choice.threshold))
    brute = max(f1_score(y, s > t) for t in np.unique(s))
    assert f1 == pytest.approx(brute)


def test_auroc_matches_sklearn_with_ties():
    good = np.array([0.1, 0.5, 0.5, 0.7])
    defect = np.array([0.5, 0.9, 0.3])
    y = np.r_[np.zeros(4), np.ones(3)]
    assert rules.auroc(good, defect) == pytest.approx(roc_auc_score(y, np.r_[good, defect]))
    assert rules.auroc(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == 0.0


def test_roc_curve_runs_from_origin_to_one():
    fpr, tpr = rules.roc_curve(np.array([0.1, 0.2, 0.3]), np.array([0.25, 0.5]))
    assert (fpr[0], tpr[0]) == (0.0, 0.0) and (fpr[-1], tpr[-1]) == (1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)


def test_pixel_f1_threshold_separates_masked_pixels():
    maps = np.zeros((2, 8, 8), np.float32) + 0.1
    masks = np.zeros((2, 8, 8), bool)
    masks[0, 2:4, 2:4] = True
    maps[0, 2:4, 2:4] = 0.9
    maps[1, 5, 5] = 0.5  # one hot pixel on background: below the best cut
    t, f1 = rules.pixel_f1_threshold(maps, masks)
    assert f1 == 1.0 and 0.5 < t < 0.9
    with pytest.raises(ValueError, match="no defect pixel"):
        rules.pixel_f1_threshold(maps, np.zeros_like(masks))


def test_good_pixel_threshold_from_a_running_top_m_equals_the_exact_quantile():
    rng = np.random.default_rng(4)
    maps = rng.gamma(2.0, 1.0, (30, 16, 16)).astype(np.float32)
    level = 0.01
    n_pixels = maps.size
    m = rules.good_pixel_count_above(n_pixels, level) + 1
    kept = np.empty(0, np.float32)
    for batch in np.array_split(maps, 7):
        kept = rules.keep_largest(kept, batch, m)
    t = rules.good_pixel_threshold(kept, n_pixels, level)
    assert np.count_nonzero(maps > t) <= level * n_pixels
    assert np.count_nonzero(maps >= t) > level * n_pixels - 1  # the lowest such t: one more pixel would cross
    assert t == np.sort(maps.ravel())[::-1][m - 1]


def test_bad_rates_and_scores_are_refused():
    with pytest.raises(ValueError, match="between 0 and 1"):
        rules.min_good_samples(0.0, 0.95)
    with pytest.raises(ValueError, match="confidence"):
        rules.order_statistic_rank(100, 0.01, 1.0)
    with pytest.raises(ValueError, match="NaN"):
        rules.order_statistic_threshold(np.array([1.0, np.nan]), 0.5, 0.5)


def test_clopper_pearson_lower_known_values():
    assert rules.clopper_pearson_lower(0, 100, 0.95) == 0.0
    lower = rules.clopper_pearson_lower(10, 40, 0.95)
    assert stats.binom.sf(9, 40, lower) == pytest.approx(0.05, abs=1e-9)  # P(X >= 10 | lower) = 1 - confidence
    assert rules.clopper_pearson_lower(7, 30, 0.9) == pytest.approx(1 - rules.clopper_pearson_upper(23, 30, 0.9), rel=1e-9)
    assert rules.clopper_pearson_lower(5, 5, 0.95) == pytest.approx(0.05 ** (1 / 5), rel=1e-9)


def test_escapes_by_type_counts_each_type_at_the_threshold():
    defect = np.array([0.1, 0.2, 0.9, 0.3, 0.8, 0.95])
    by_type = rules.escapes_by_type(defect, ["a", "a", "a", "b", "b", "b"], 0.5, 0.95)
    assert list(by_type) == ["a", "b"]
    assert (by_type["a"].events, by_type["a"].trials, by_type["b"].events, by_type["b"].trials) == (2, 3, 1, 3)
    assert by_type["a"].upper == rules.clopper_pearson_upper(2, 3, 0.95)
    from calibrate.summary import worst_type

    assert worst_type(by_type) == "a" and worst_type({}) is None


def _live(judged_defect: int, judged: int, thresholds=(1.0,)):
    from calibrate.live import LiveScores

    return LiveScores(scores=np.zeros(judged), per_camera={"cam0": judged}, seq_ranges={"cam0": (0, judged - 1)}, unjudged=0,
                      judged_defect=judged_defect, judged=judged, thresholds=list(thresholds), lost=0, dropped=0, bad_messages=0, seconds=1.0)


@pytest.mark.parametrize("target, confidence", [(0.001, 0.95), (0.01, 0.99), (0.1, 0.95), (0.05, 0.9)])
def test_live_defect_share_one_frame_never_trips_a_share_of_defects_always_does(target, confidence):
    from calibrate.fit import FitOptions
    from calibrate.live import defect_share_check
    from edge.manifest import Calibration, InputSpec, Manifest, Provenance

    pinned = Manifest(format_version=1, model_id="0" * 64, input=InputSpec(height_px=32, width_px=32), provenance=Provenance(data="x"))
    options = FitOptions(target_false_reject=target, confidence=confidence)
    n = rules.min_good_samples(target, confidence)  # the fewest frames live accepts for this target
    assert defect_share_check(_live(1, n), pinned, options)[0] is None
    problem, _ = defect_share_check(_live(math.ceil(n * max(4 * target, 0.25)), n), pinned, options)
    assert problem is not None and f"of {n} frames" in problem and "the target false-reject rate" in problem
    # A calibration in force on few samples backs a higher rate: a share below it is no sign of defects.
    few = Calibration(image_threshold=1.0, pixel_threshold=1.0, method="site", n_good=5)
    lenient = msgspec.structs.replace(pinned, calibration=few)
    limit = rules.lowest_supported_target(5, confidence)
    d = max(1, math.floor(n * limit * 0.9))
    assert defect_share_check(_live(d, n), lenient, options)[0] is None
    assert defect_share_check(_live(d, n), pinned, options)[0] is not None  # the target alone would refuse it
