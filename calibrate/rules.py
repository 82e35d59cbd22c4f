"""Threshold rules: pure functions from scores (and maps) to thresholds, with the evidence behind them.

A frame is judged defective when its image score is *above* the image threshold (score > t), and a
pixel belongs to the defect mask when the anomaly map is above the pixel threshold.

Image threshold from good samples only (the order-statistic rule)
    We want the false-reject rate p* = P(good score > t) to be at most the target p, and we want to be
    sure of it at confidence c although we only have n good samples. Take t = the k-th largest good
    score. For any continuous score distribution the true false-reject rate of that threshold is
    distributed as Beta(k, n - k + 1), so

        P(true FRR > p) = P(Binomial(n, p) <= k - 1).

    The rule picks the largest k (the lowest threshold, hence the most sensitive one) for which this
    probability is at most 1 - c. Nothing about the shape of the score distribution is assumed. Even
    k = 1 (the largest good score) needs (1 - p)^n <= 1 - c, i.e.

        n >= ln(1 - c) / ln(1 - p)     (2,995 good samples for p = 0.001 at c = 0.95)

    and with fewer samples the request cannot be honoured: the calibration is refused, naming the
    sample count needed and the lowest target the samples do support, 1 - (1 - c)^(1/n).
    Forced anyway, the threshold is extrapolated from an exponential tail fitted to the top 20 % of
    the good scores (peaks over threshold with shape 0, the tail of a max of smoothed errors), never
    below the largest good score, and labelled "tail extrapolation": it rests on that assumption,
    not on the sample alone.

Image threshold with labelled defects
    "recall-at-frr": the highest recall whose false-reject rate still meets the target at confidence c.
    Recall only falls as the threshold rises, so this is the lowest threshold the order-statistic rule
    allows: the same threshold as above, now with the escape rate measured on defects it never saw.
    "best-f1": the threshold that maximises F1 (defects positive) on the samples, placed halfway
    between the two adjacent scores where the decision changes (the same decisions on the samples,
    the largest margin to either side). Its rates are in-sample, hence optimistic, and marked so.

Evidence
    Every rate is reported as events / trials with a one-sided Clopper-Pearson upper bound at the same
    confidence c (the exact binomial bound: the true rate is at most `upper` with probability c). For
    the order-statistic rule this bound on the k - 1 good samples above t is at most the target.

Pixel threshold
    With defect masks: the threshold maximising pixel F1 over the pixels of the labelled defect images
    (masks are published only for frames judged defective, so the threshold is fitted where it is
    used). Without masks: the good-pixel quantile at the same rate as the image target, i.e. good
    pixels are flagged no more often than good frames are rejected. Either way it is capped at the
    image threshold, so that every frame judged defective has a non-empty mask.
"""

from __future__ import annotations

import math

import msgspec
import numpy as np
from scipy import stats

from edge.manifest import RateEvidence, ScoreStats

TAIL_FRACTION = 0.2  # share of the good scores the exponential tail is fitted to when forced
MIN_TAIL_EXCEEDANCES = 3  # fewer points than this cannot estimate a tail's scale
MIN_TAIL_SAMPLES = 10  # below this even a forced tail fit is refused: nothing to fit


class Choice(msgspec.Struct, frozen=True, kw_only=True):
    """An image threshold and how it was reached, in words a quality engineer can check."""

    threshold: float
    method: str  # "order-statistic", "tail-extrapolation", "best-f1"
    detail: str


# -- the order-statistic rule ------------------------------------------------------------------------
def min_good_samples(target: float, confidence: float) -> int:
    """The fewest good samples for which even the largest score bounds the false-reject rate by target."""
    _check_rate(target, confidence)
    n = math.ceil(math.log(1 - confidence) / math.log1p(-target))
    # Guard the float rounding at the boundary: the smallest n with (1 - p)^n <= 1 - c.
    while n > 1 and (1 - target) ** (n - 1) <= 1 - confidence:
        n -= 1
    while (1 - target) ** n > 1 - confidence:
        n += 1
    return n


def lowest_supported_target(n: int, confidence: float) -> float:
    """The smallest false-reject target that n good samples can back at this confidence."""
    if n <= 0:
        return 1.0
    return 1 - (1 - confidence) ** (1 / n)


def order_statistic_rank(n: int, target: float, confidence: float) -> int | None:
    """The largest k (1 = the maximum) with P(Binomial(n, target) <= k - 1) <= 1 - confidence, or None."""
    _check_rate(target, confidence)
    if n <= 0:
        return None
    cdf = stats.binom.cdf(np.arange(n), n, target)  # cdf[j] = P(X <= j), j = k - 1
    allowed = np.flatnonzero(cdf <= 1 - confidence)
    return int(allowed[-1]) + 1 if allowed.size else None


def order_statistic_threshold(good: np.ndarray, target: float, confidence: float) -> Choice | None:
    """The k-th largest good score by the rule above; None when there are too few samples."""
    good = _scores(good)
    k = order_statistic_rank(good.size, target, confidence)
    if k is None:
        return None
    t = float(np.sort(good)[::-1][k - 1])
    detail = (
        f"{_ordinal(k)} largest of {good.size} good scores: P(false-reject > {target:g}) <= {1 - confidence:.3g} "
        f"(distribution-free order statistic at {confidence:.0%} confidence)"
    )
    return Choice(threshold=t, method="order-statistic", detail=detail)


def tail_threshold(good: np.ndarray, target: float) -> Choice:
    """Extrapolate an exponential tail fitted to the top TAIL_FRACTION of the good scores (forced only)."""
    good = np.sort(_scores(good))[::-1]
    n = good.size
    if n < MIN_TAIL_SAMPLES:
        raise ValueError(f"{n} good samples cannot support a tail fit; at least {MIN_TAIL_SAMPLES} are needed")
    m = min(max(math.ceil(TAIL_FRACTION * n), MIN_TAIL_EXCEEDANCES), n - 1)
    u = float(good[m])  # the (m+1)-th largest: the tail starts above it
    scale = float(np.mean(good[:m] - u))  # maximum-likelihood scale of an exponential excess
    exceed_rate = m / n
    t = u + scale * math.log(exceed_rate / target) if target < exceed_rate else u
    t = max(t, float(good[0]))  # never below a good score actually seen
    detail = (
        f"EXTRAPOLATED: exponential tail (scale {scale:.4g}) fitted to the top {m} of {n} good scores above "
        f"{u:.4g}; assumes that tail shape, the sample alone cannot back a false-reject rate of {target:g}"
    )
    return Choice(threshold=t, method="tail-extrapolation", detail=detail)


# -- labelled defects ---------------------------------------------------------------------------------
def best_f1_threshold(good: np.ndarray, defect: np.ndarray) -> tuple[Choice, float]:
    """The threshold maximising image F1 (defects positive), halfway between the deciding scores."""
    good, defect = _scores(good), _scores(defect)
    if good.size == 0 or defect.size == 0:
        raise ValueError("best F1 needs good and defective samples")
    t, f1 = _best_f1(np.concatenate([good, defect]), np.concatenate([np.zeros(good.size, bool), np.ones(defect.size, bool)]))
    detail = f"maximises F1 = {f1:.3f} over {good.size} good and {defect.size} defective samples (in-sample)"
    return Choice(threshold=t, method="best-f1", detail=detail), f1


def auroc(good: np.ndarray, defect: np.ndarray) -> float:
    """P(defect score > good score), ties counted half; NaN when either side is empty (nothing to rank)."""
    from train.metrics import auroc as auroc_of  # the one implementation (numpy only, ties as sklearn)

    good, defect = _scores(good), _scores(defect)
    if good.size == 0 or defect.size == 0:
        return float("nan")
    return auroc_of(np.concatenate([good, defect]), np.concatenate([np.zeros(good.size, bool), np.ones(defect.size, bool)]))


def roc_curve(good: np.ndarray, defect: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false-reject rate, recall) for every threshold, from (0, 0) to (1, 1)."""
    good, defect = _scores(good), _scores(defect)
    cuts = np.unique(np.concatenate([good, defect]))[::-1]
    good_s, defect_s = np.sort(good), np.sort(defect)
    fpr = 1 - np.searchsorted(good_s, cuts, side="left") / max(good.size, 1)  # share with score >= cut
    tpr = 1 - np.searchsorted(defect_s, cuts, side="left") / max(defect.size, 1)
    return np.concatenate([[0.0], fpr]), np.concatenate([[0.0], tpr])


# -- evidence -----------------------------------------------------------------------------------------
def clopper_pearson_upper(events: int, trials: int, confidence: float) -> float:
    """One-sided exact binomial upper bound: P(true rate <= bound) >= confidence."""
    if trials <= 0 or events >= trials:
        return 1.0
    return float(stats.beta.ppf(confidence, events + 1, trials - events))


def clopper_pearson_lower(events: int, trials: int, confidence: float) -> float:
    """One-sided exact binomial lower bound: P(true rate >= bound) >= confidence."""
    if trials <= 0 or events <= 0:
        return 0.0
    return float(stats.beta.ppf(1 - confidence, events, trials - events + 1))


def rate_evidence(events: int, trials: int, confidence: float, *, in_sample: bool = False) -> RateEvidence:
    return RateEvidence(
        events=int(events),
        trials=int(trials),
        rate=events / trials if trials else float("nan"),
        upper=clopper_pearson_upper(events, trials, confidence),
        confidence=confidence,
        in_sample=in_sample,
    )


def false_rejects(good: np.ndarray, threshold: float) -> int:
    return int(np.count_nonzero(_scores(good) > threshold))


def escapes(defect: np.ndarray, threshold: float) -> int:
    return int(np.count_nonzero(_scores(defect) <= threshold))


def escapes_by_type(defect: np.ndarray, types: list[str], threshold: float, confidence: float, *, in_sample: bool = False) -> dict[str, RateEvidence]:
    """The escape evidence of each defect type (types[i] is the type of defect[i]), types in sorted order."""
    defect = _scores(defect)
    labels = np.asarray(types, dtype=object)
    return {
        name: rate_evidence(escapes(defect[labels == name], threshold), int(np.count_nonzero(labels == name)), confidence, in_sample=in_sample)
        for name in sorted(set(types))
    }


def score_stats(good: np.ndarray) -> ScoreStats:
    good = _scores(good)
    if good.size == 0:
        return ScoreStats(count=0, mean=0.0, std=0.0, p50=0.0, p99=0.0, max=0.0)
    return ScoreStats(
        count=int(good.size),
        mean=float(good.mean()),
        std=float(good.std()),
        p50=float(np.quantile(good, 0.5)),
        p99=float(np.quantile(good, 0.99)),
        max=float(good.max()),
    )


# -- pixel threshold ----------------------------------------------------------------------------------
def pixel_f1_threshold(maps: np.ndarray, masks: np.ndarray) -> tuple[float, float]:
    """(threshold, F1) maximising pixel F1 of maps (N, H, W) against boolean masks (N, H, W)."""
    if maps.shape != masks.shape:
        raise ValueError(f"maps {maps.shape} and masks {masks.shape} differ in shape")
    if not masks.any():
        raise ValueError("the masks mark no defect pixel; pass the ground-truth masks of the defect images")
    return _best_f1(maps.ravel().astype(np.float64), masks.ravel().astype(bool))


def good_pixel_count_above(n_pixels: int, level: float) -> int:
    """How many of n_pixels good pixels may lie above the threshold when flagging at rate `level`."""
    return int(math.floor(level * n_pixels))


def keep_largest(kept: np.ndarray, values: np.ndarray, m: int) -> np.ndarray:
    """The m largest of kept ∪ values (unordered): a running top-m over batches of maps."""
    pool = np.concatenate([kept, np.asarray(values, np.float32).ravel()])
    if pool.size <= m:
        return pool
    return np.partition(pool, pool.size - m)[pool.size - m :]


def good_pixel_threshold(largest: np.ndarray, n_pixels: int, level: float) -> float:
    """The lowest t with at most level * n_pixels good pixels above it, from their m largest values.

    `largest` must hold at least good_pixel_count_above(n_pixels, level) + 1 values (see keep_largest).
    """
    m = good_pixel_count_above(n_pixels, level) + 1
    if largest.size < min(m, n_pixels):
        raise ValueError(f"need the {m} largest good pixels, got {largest.size}")
    ordered = np.sort(largest)[::-1]
    return float(ordered[min(m, ordered.size) - 1])


# -- helpers ------------------------------------------------------------------------------------------
def _best_f1(values: np.ndarray, positive: np.ndarray) -> tuple[float, float]:
    """Best F1 of the decision `value > t`; t halfway between the two values where the decision changes."""
    order = np.argsort(-values, kind="stable")
    v, y = values[order], positive[order]
    tp = np.cumsum(y)
    fp = np.cumsum(~y)
    n_pos = int(y.sum())
    # A cut after index i (indices 0..i judged positive) is possible only where the value changes.
    ends = np.flatnonzero(np.diff(v) < 0)
    ends = np.append(ends, v.size - 1)
    f1 = 2 * tp[ends] / (2 * tp[ends] + fp[ends] + (n_pos - tp[ends]))
    best = int(np.argmax(f1))  # first maximum = the highest threshold among equals (fewest false rejects)
    i = ends[best]
    t = (v[i] + v[i + 1]) / 2 if i + 1 < v.size else max(0.0, float(np.nextafter(v[i], -np.inf)))
    return float(t), float(f1[best])


def _scores(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64).ravel()
    if not np.isfinite(x).all():
        raise ValueError("scores contain NaN or infinity; the model output is broken for some samples")
    return x


def _check_rate(target: float, confidence: float) -> None:
    if not 0 < target < 1:
        raise ValueError(f"target false-reject rate {target} must lie strictly between 0 and 1, e.g. 0.001")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence {confidence} must lie strictly between 0 and 1, e.g. 0.95")


def _ordinal(k: int) -> str:
    suffix = "th" if 10 <= k % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(k % 10, "th")
    return f"{k}{suffix}"
