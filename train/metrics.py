"""Anomaly-detection metrics in numpy: image/pixel AUROC, AUPRO (MVTec AD protocol) and best F1.

Every curve here is exact: scores are sorted once and the counts are accumulated at each distinct score
value, so ties are handled like scikit-learn (a tie group moves the curve diagonally) and no grid of
thresholds is compared against the full array. Memory is a few arrays the size of the input (for
200 maps of 256x256: ~13M pixels, a few hundred MB at most), time is one sort.

Conventions: a higher score means "more anomalous"; a sample is flagged when score > threshold.
"""

from __future__ import annotations

import msgspec
import numpy as np

AUPRO_FPR_LIMIT = 0.3  # MVTec AD protocol: integrate the PRO curve up to 30 % false-positive rate
EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


class BestF1(msgspec.Struct, frozen=True, kw_only=True):
    f1: float
    threshold: float  # score > threshold -> defect reaches this F1
    precision: float
    recall: float


def _trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1])) / 2)  # np.trapezoid needs numpy 2


def _check_finite(scores: np.ndarray, what: str) -> None:
    if not np.isfinite(scores).all():
        raise ValueError(f"{what} contain NaN or infinity; the model output is broken (re-train or re-export it)")


def _tie_groups(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sort descending. Returns (order, sorted scores, ends): ends[i] is the last sorted index of the i-th
    distinct score, so a cumulative sum read at `ends` counts everything with score >= that value."""
    order = np.argsort(scores)[::-1]  # tie order is irrelevant: ties are read per group
    ranked = scores[order]
    ends = np.append(np.flatnonzero(ranked[1:] != ranked[:-1]), ranked.size - 1)
    return order, ranked, ends


def _roc_points(labels_sorted: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) at every distinct threshold, starting at (0, 0); labels_sorted is bool in score order."""
    tp = np.cumsum(labels_sorted, dtype=np.int64)[ends]
    fp = (ends + 1) - tp
    n_pos, n_neg = tp[-1], fp[-1]
    fpr = np.concatenate(([0.0], fp / n_neg))
    tpr = np.concatenate(([0.0], tp / n_pos))
    return fpr, tpr


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve of `scores` (any shape) for boolean `labels` (same shape).

    Equals sklearn.metrics.roc_auc_score, ties included. Needs both classes present.
    """
    scores = np.asarray(scores).ravel()
    labels = np.asarray(labels).ravel().astype(bool)
    if scores.shape != labels.shape:
        raise ValueError(f"scores ({scores.size}) and labels ({labels.size}) differ in size")
    n_pos = int(labels.sum())
    if n_pos == 0 or n_pos == labels.size:
        raise ValueError("AUROC needs both normal and anomalous samples")
    _check_finite(scores, "scores")
    order, _, ends = _tie_groups(scores)
    fpr, tpr = _roc_points(labels[order], ends)
    return float(_trapezoid(tpr, fpr))


def best_f1(scores: np.ndarray, labels: np.ndarray) -> BestF1:
    """The highest F1 over all thresholds on image scores, and the threshold reaching it.

    The threshold is the midpoint between the lowest flagged score and the highest unflagged one, so it
    reads as "score > threshold -> defect" and does not sit on a sample. Of equal F1s the strictest wins.
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel().astype(bool)
    n_pos = int(labels.sum())
    if n_pos == 0:
        raise ValueError("best F1 needs at least one anomalous sample")
    _check_finite(scores, "scores")
    order, ranked, ends = _tie_groups(scores)
    tp = np.cumsum(labels[order], dtype=np.int64)[ends]
    flagged = ends + 1
    f1 = 2 * tp / (flagged + n_pos)  # 2TP / (2TP + FP + FN), with TP + FP = flagged and TP + FN = n_pos
    best = int(np.argmax(f1))
    lowest_flagged = ranked[ends[best]]
    if ends[best] + 1 < ranked.size:
        threshold = (lowest_flagged + ranked[ends[best] + 1]) / 2
    else:
        # Everything flagged: just below the lowest score. Not nextafter: below 0 that is a denormal, which a
        # training process (torch.set_flush_denormal) reads as -0.0, and `0 > -0.0` would unflag the zeros.
        threshold = lowest_flagged - max(np.spacing(abs(lowest_flagged)), np.finfo(np.float64).tiny)
    return BestF1(f1=float(f1[best]), threshold=float(threshold), precision=float(tp[best] / flagged[best]), recall=float(tp[best] / n_pos))


def label_regions(masks: np.ndarray) -> tuple[np.ndarray, int]:
    """Connected ground-truth regions (8-connectivity), numbered 1..R across all images; 0 = normal."""
    masks = np.asarray(masks).astype(bool)
    labels = np.zeros(masks.shape, dtype=np.int32)
    count = 0
    for i, mask in enumerate(masks):
        from scipy import ndimage  # AUPRO only: the numpy metrics above serve boxes without scipy

        lab, n = ndimage.label(mask, structure=EIGHT_CONNECTED)
        labels[i] = np.where(lab > 0, lab + count, 0)
        count += n
    return labels, count


def _partial_area(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Trapezoidal area under y(x) for x in [0, x_max]; x is non-decreasing and starts at 0.
    The curve is cut exactly at x_max, interpolating linearly between the points around it."""
    k = int(np.searchsorted(x, x_max, side="right"))  # x[:k] <= x_max
    xs, ys = x[:k], y[:k]
    if xs[-1] < x_max and k < x.size:
        y_cut = y[k - 1] + (y[k] - y[k - 1]) * (x_max - x[k - 1]) / (x[k] - x[k - 1])
        xs, ys = np.append(xs, x_max), np.append(ys, y_cut)
    return float(_trapezoid(ys, xs))


class PixelMetrics(msgspec.Struct, frozen=True, kw_only=True):
    pixel_auroc: float | None  # None when there are no anomalous (or no normal) pixels
    aupro: float | None
    n_regions: int


def pixel_metrics(maps: np.ndarray, masks: np.ndarray, fpr_limit: float = AUPRO_FPR_LIMIT) -> PixelMetrics:
    """Pixel AUROC and AUPRO of anomaly maps (N, H, W) against boolean ground-truth masks (N, H, W).

    AUPRO (Bergmann et al., MVTec AD): for each threshold, PRO = mean over all ground-truth regions
    (8-connected, across all images) of the fraction of the region's pixels above the threshold, and
    FPR = fraction of all pixels outside the masks above it; the area under PRO(FPR) for FPR in
    [0, fpr_limit], divided by fpr_limit. Both metrics share one sort of the pixels.
    """
    maps = np.asarray(maps)
    masks = np.asarray(masks).astype(bool)
    if maps.shape != masks.shape or maps.ndim != 3:
        raise ValueError(f"maps {maps.shape} and masks {masks.shape} must both be (N, H, W)")
    if not 0 < fpr_limit <= 1:
        raise ValueError(f"fpr_limit {fpr_limit} must lie in (0, 1]")
    _check_finite(maps, "anomaly maps")
    regions, n_regions = label_regions(masks)
    n_anomalous = int(masks.sum())
    if n_anomalous == 0 or n_anomalous == masks.size:
        return PixelMetrics(pixel_auroc=None, aupro=None, n_regions=n_regions)
    order, ranked, ends = _tie_groups(maps.ravel())
    region_sorted = regions.ravel()[order]  # (P,) int32 region id of each pixel, in score order
    del order, ranked, regions  # the sweep below needs only region ids and group ends
    fpr, tpr = _roc_points(region_sorted > 0, ends)
    pixel_auroc = float(_trapezoid(tpr, fpr))
    # Each pixel of region r adds 1 / (R * |r|) to PRO once the threshold drops below its score.
    sizes = np.bincount(region_sorted, minlength=n_regions + 1).astype(np.float64)
    weight = np.zeros(n_regions + 1)
    weight[1:] = 1.0 / (n_regions * sizes[1:])
    gained = weight[region_sorted]
    pro = np.concatenate(([0.0], np.cumsum(gained, out=gained)[ends]))
    aupro = _partial_area(fpr, pro, fpr_limit) / fpr_limit
    return PixelMetrics(pixel_auroc=pixel_auroc, aupro=aupro, n_regions=n_regions)
