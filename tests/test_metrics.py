"""Metrics against scikit-learn and a hand-computed AUPRO case."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import precision_recall_curve, roc_auc_score

from train.metrics import auroc, best_f1, label_regions, pixel_metrics


@pytest.mark.parametrize("seed", range(5))
def test_auroc_matches_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(20, 400))
    scores = rng.integers(0, 8, n).astype(np.float32)  # few distinct values: many ties
    labels = rng.random(n) < 0.3
    labels[:2] = [True, False]
    assert auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    continuous = rng.normal(size=n) + labels
    assert auroc(continuous, labels) == pytest.approx(roc_auc_score(labels, continuous), abs=1e-12)


def test_auroc_extremes_and_errors():
    labels = np.array([0, 0, 0, 1, 1], bool)
    assert auroc(np.array([0.1, 0.2, 0.3, 0.8, 0.9]), labels) == 1.0
    assert auroc(np.array([0.9, 0.8, 0.7, 0.2, 0.1]), labels) == 0.0
    assert auroc(np.ones(5), labels) == 0.5  # one big tie
    rng = np.random.default_rng(0)
    big = rng.random(20000) < 0.5
    assert auroc(rng.random(20000), big) == pytest.approx(0.5, abs=0.02)
    with pytest.raises(ValueError, match="both"):
        auroc(np.ones(3), np.zeros(3, bool))
    with pytest.raises(ValueError, match="NaN"):
        auroc(np.array([0.1, np.nan]), np.array([0, 1], bool))


def test_best_f1_hand_case_and_sklearn():
    scores = np.array([0.1, 0.4, 0.35, 0.8])
    labels = np.array([0, 0, 1, 1], bool)
    # >=0.8: F1 2/3; >=0.4: 1/2; >=0.35: 4/5 (TP 2, FP 1); >=0.1: 2/3. Threshold between 0.35 and 0.1.
    best = best_f1(scores, labels)
    assert best.f1 == pytest.approx(0.8) and best.threshold == pytest.approx(0.225)
    assert best.precision == pytest.approx(2 / 3) and best.recall == 1.0
    assert ((scores > best.threshold) == np.array([0, 1, 1, 1], bool)).all()

    rng = np.random.default_rng(3)
    scores = rng.integers(0, 10, 300).astype(float)
    labels = rng.random(300) < 0.4
    p, r, _ = precision_recall_curve(labels, scores)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.nan_to_num(2 * p * r / (p + r))
    best = best_f1(scores, labels)
    assert best.f1 == pytest.approx(f1.max(), abs=1e-12)
    flagged = scores > best.threshold
    tp = (flagged & labels).sum()
    assert 2 * tp / (flagged.sum() + labels.sum()) == pytest.approx(best.f1)
    every = best_f1(np.array([1.0, 2.0]), np.array([1, 1], bool))
    assert every.f1 == 1.0 and (np.array([1.0, 2.0]) > every.threshold).all()


def hand_case():
    """Two 2x3 maps. Image 0 has one diagonal region {(0,0),(1,1),(0,2)} (one region only with
    8-connectivity), image 1 one region of 5 pixels; 4 normal pixels in all."""
    masks = np.array([[[1, 0, 1], [0, 1, 0]], [[1, 1, 1], [1, 1, 0]]], bool)
    maps = np.array([[[0.9, 0.5, 0.4], [0.2, 0.7, 0.1]], [[0.8, 0.5, 0.3], [0.6, 0.05, 0.3]]], np.float32)
    return maps, masks


def test_aupro_hand_computed():
    maps, masks = hand_case()
    # Thresholds (flag >= t), PRO = mean of region overlaps (R1 of 3 px, R2 of 5 px), FPR over 4 normal px:
    #   0.9: R1 1/3          PRO 1/6    FPR 0
    #   0.8: R2 1/5          PRO 4/15   FPR 0
    #   0.7: R1 2/3          PRO 13/30  FPR 0
    #   0.6: R2 2/5          PRO 8/15   FPR 0
    #   0.5: R2 3/5, +1 FP   PRO 19/30  FPR 1/4   (tie between a normal and an anomalous pixel)
    #   0.4: R1 3/3          PRO 4/5    FPR 1/4
    #   0.3: R2 4/5, +1 FP   PRO 9/10   FPR 1/2   (tie again)
    # Area to FPR 0.3: (0,8/15)->(1/4,19/30) = 1/4 * (8/15 + 19/30)/2 = 7/48; the vertical step adds 0;
    # (1/4, 4/5) -> cut at 0.3 where PRO = 4/5 + (1/10)/(1/4) * 0.05 = 0.82: 0.05 * 0.81 = 81/2000.
    # Sum 559/3000, normalised by 0.3: 559/900.
    result = pixel_metrics(maps, masks)
    assert result.n_regions == 2
    assert result.aupro == pytest.approx(559 / 900, abs=1e-12)
    assert result.pixel_auroc == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-12)
    # With the whole curve (FPR up to 1) the cut falls on a curve point: check against a plain trapezoid.
    # Points: ..., (1/4, 4/5), (1/2, 9/10), (3/4, 9/10), (1, 9/10), (1, 1).
    full = 7 / 48 + 1 / 4 * (4 / 5 + 9 / 10) / 2 + 1 / 4 * 9 / 10 + 1 / 4 * 9 / 10
    assert pixel_metrics(maps, masks, fpr_limit=1.0).aupro == pytest.approx(full, abs=1e-12)


def test_regions_are_eight_connected_across_images():
    _, masks = hand_case()
    labels, n = label_regions(masks)
    assert n == 2 and set(np.unique(labels[0])) == {0, 1} and set(np.unique(labels[1])) == {0, 2}


def blob_masks(rng, n=12, size=48):
    masks = np.zeros((n, size, size), bool)
    for i in range(n // 2):  # half the images carry 1-3 blobs of different sizes
        for _ in range(rng.integers(1, 4)):
            cy, cx = rng.integers(6, size - 6, 2)
            r = rng.integers(1, 6)
            yy, xx = np.ogrid[:size, :size]
            masks[i] |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    return masks


def test_perfect_and_random_detectors():
    rng = np.random.default_rng(1)
    masks = blob_masks(rng)
    perfect = pixel_metrics(masks.astype(np.float32) + rng.random(masks.shape, np.float32) * 0.5, masks)
    assert perfect.pixel_auroc == 1.0 and perfect.aupro == pytest.approx(1.0)
    randomised = pixel_metrics(rng.random(masks.shape, np.float32), masks)
    assert randomised.pixel_auroc == pytest.approx(0.5, abs=0.05)
    # A random detector has PRO ~= FPR: area to 0.3 is 0.045, normalised 0.15.
    assert randomised.aupro == pytest.approx(0.15, abs=0.04)


def test_aupro_weights_regions_equally():
    # Detecting only the big region of two halves PRO: AUPRO ~ 0.5 while pixel AUROC stays high.
    masks = np.zeros((2, 32, 32), bool)
    masks[0, 2:22, 2:22] = True  # 400 px
    masks[1, 5:7, 5:7] = True  # 4 px, missed
    maps = np.where(masks, 0.0, 0.1).astype(np.float32)
    maps[0][masks[0]] = 1.0
    result = pixel_metrics(maps, masks)
    assert result.aupro == pytest.approx(0.5)
    assert result.pixel_auroc > 0.99


def test_aupro_matches_threshold_loop_on_random_data():
    """Brute force: PRO and FPR at every distinct score by direct comparison, on a small random case."""
    rng = np.random.default_rng(7)
    masks = blob_masks(rng, n=4, size=16)
    maps = (rng.random(masks.shape) * 4 + masks * rng.random(masks.shape) * 3).round(1).astype(np.float32)
    structure = np.zeros((3, 3, 3), bool)
    structure[1] = True  # 8-connected within an image, never across images
    labels, n = ndimage.label(masks, structure=structure)
    fprs, pros = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        hit = maps >= t
        fprs.append((hit & ~masks).sum() / (~masks).sum())
        pros.append(np.mean([hit[labels == r].mean() for r in range(1, n + 1)]))
    fprs, pros = np.array(fprs), np.array(pros)
    keep = fprs <= 0.3
    xs, ys = list(fprs[keep]), list(pros[keep])
    k = keep.sum()
    ys.append(pros[k - 1] + (pros[k] - pros[k - 1]) * (0.3 - fprs[k - 1]) / (fprs[k] - fprs[k - 1]))
    xs.append(0.3)
    expected = np.sum(np.diff(xs) * (np.array(ys[1:]) + ys[:-1]) / 2) / 0.3
    assert pixel_metrics(maps, masks).aupro == pytest.approx(expected, abs=1e-12)


def test_pixel_metrics_without_anomalous_pixels():
    maps = np.random.default_rng(0).random((2, 8, 8), np.float32)
    result = pixel_metrics(maps, np.zeros((2, 8, 8), bool))
    assert result.pixel_auroc is None and result.aupro is None and result.n_regions == 0


def test_best_f1_threshold_below_zero_survives_flush_to_zero():
    """A training process sets torch.set_flush_denormal(True); the 'everything flagged' threshold below a score of
    0 must not be a denormal that reads as -0.0 there (it then unflagged every zero score)."""
    torch = pytest.importorskip("torch")
    scores, labels = np.array([0.0, 0.0, 1.0]), np.array([1, 1, 1], bool)
    torch.set_flush_denormal(True)
    try:
        best = best_f1(scores, labels)
        assert best.f1 == 1.0 and (scores > best.threshold).all()
    finally:
        torch.set_flush_denormal(False)
