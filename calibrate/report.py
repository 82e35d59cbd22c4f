"""The calibration report: one PNG a quality engineer reads at a glance.

Top: histograms of good and defective image scores with the threshold; with labelled defects, the ROC
curve with the chosen operating point and the escapes per defect type (the worst one named, so that a type
that always escapes cannot hide in the total). Bottom: the summary table in words.
"""

from __future__ import annotations

import io
import textwrap
from pathlib import Path

import numpy as np

from calibrate import rules
from calibrate.summary import summary_rows, worst_type
from edge.files import atomic_write_bytes
from edge.manifest import Calibration

GOOD_COLOUR = "#2b7bba"
DEFECT_COLOUR = "#d62728"


def write_report(path: Path, calibration: Calibration, good: np.ndarray, defect: np.ndarray | None, *, title: str) -> Path:
    """Render and write the report atomically (temp file + rename); returns the path."""
    import matplotlib

    matplotlib.use("Agg")  # no display on a line PC or in CI
    import matplotlib.pyplot as plt

    labelled = defect is not None and defect.size > 0
    typed = labelled and bool(calibration.escape_by_type)
    columns = 1 + labelled + typed
    fig = plt.figure(figsize=(14 if columns < 3 else 19, 10.5 + 0.15 * len(calibration.escape_by_type)))
    try:
        grid = fig.add_gridspec(2, columns, height_ratios=[1.0, 0.85])
        fig.suptitle(title, fontsize=15, fontweight="bold")
        _histograms(fig.add_subplot(grid[0, 0]), calibration, good, defect if labelled else None)
        if labelled:
            _roc(fig.add_subplot(grid[0, 1]), calibration, good, defect)
        if typed:
            _escapes_by_type(fig.add_subplot(grid[0, 2]), calibration)
        _text(fig.add_subplot(grid[1, :]), calibration)
        fig.tight_layout(rect=(0, 0, 1, 0.96))
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
    finally:
        plt.close(fig)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())
    return path


def _histograms(ax, cal: Calibration, good: np.ndarray, defect: np.ndarray | None) -> None:
    t = cal.image_threshold
    values = np.concatenate([good, defect if defect is not None else [], [t]])
    lo, hi = float(values.min()), float(values.max())
    bins = np.linspace(lo, hi + (hi - lo) * 1e-6 + 1e-12, 50)
    ax.hist(good, bins=bins, color=GOOD_COLOUR, alpha=0.6, label=f"good (n={good.size})")
    if defect is not None:
        ax.hist(defect, bins=bins, color=DEFECT_COLOUR, alpha=0.6, label=f"defect (n={defect.size})")
    ax.axvline(t, color="black", linewidth=2, linestyle="--", label=f"threshold {t:.4g}")
    ax.axvspan(t, bins[-1] + 0.1 * (bins[-1] - bins[0]), color=DEFECT_COLOUR, alpha=0.06)
    span = bins[-1] - bins[0]
    ax.set_xlim(bins[0] - 0.02 * span, bins[-1] + 0.1 * span)  # room for the "reject" label right of the line
    ymax = ax.get_ylim()[1]
    ax.text(t, ymax * 0.97, "  reject →", ha="left", va="top", fontsize=11, color=DEFECT_COLOUR)
    ax.text(t, ymax * 0.97, "← pass  ", ha="right", va="top", fontsize=11, color=GOOD_COLOUR)
    if good.size > 200:
        ax.set_yscale("log")  # the tail above the bulk is what the threshold is about
    ax.set_xlabel("image score (max of the anomaly map)")
    ax.set_ylabel("images")
    ax.set_title("Scores and threshold")
    ax.legend(loc="best", fontsize=10)
    ax.grid(alpha=0.3)


def _roc(ax, cal: Calibration, good: np.ndarray, defect: np.ndarray) -> None:
    fpr, tpr = rules.roc_curve(good, defect)
    t = cal.image_threshold
    op_fr, op_recall = float(np.mean(good > t)), float(np.mean(defect > t))
    # Targets of 0.1 % live in the curve's first pixel on a linear axis: with enough goods, use a log axis
    # and draw a rate of 0 at half of the smallest measurable one, 1/(2n).
    log_x = good.size >= 100
    floor = 0.5 / good.size
    x = np.maximum(fpr, floor) if log_x else fpr
    ax.plot(x, tpr, color=DEFECT_COLOUR, linewidth=2, drawstyle="steps-post", label=f"ROC (AUROC {rules.auroc(good, defect):.3f})")
    ax.plot([max(op_fr, floor) if log_x else op_fr], [op_recall], "o", color="black", markersize=9,
            label=f"threshold: false-reject {op_fr:.2%}, recall {op_recall:.1%}")
    if cal.target_false_reject is not None:
        ax.axvline(cal.target_false_reject, color=GOOD_COLOUR, linestyle="--", linewidth=1, label=f"target false-reject {cal.target_false_reject:g}")
    if log_x:
        ax.set_xscale("log")
        ax.set_xlim(floor * 0.7, 1.05)
        ax.set_xlabel(f"false-reject rate (good parts rejected; log scale, 0 drawn at {floor:.1g})")
    else:
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="chance")
        ax.set_xlim(-0.02, 1.02)
        ax.set_xlabel("false-reject rate (good parts rejected)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("recall (defective parts caught)")
    ax.set_title("ROC on the labelled samples")
    ax.legend(loc="lower right", fontsize=9)
    ax.grid(alpha=0.3, which="both")


def _escapes_by_type(ax, cal: Calibration) -> None:
    """Escape rate per defect type with its Clopper-Pearson upper bound; the worst type in red, named in the title."""
    by_type = cal.escape_by_type
    worst = worst_type(by_type)
    names = sorted(by_type, key=lambda name: (-by_type[name].rate, name))[::-1]  # barh draws bottom-up: worst on top
    rates = np.array([by_type[n].rate for n in names])
    uppers = np.array([by_type[n].upper for n in names])
    worst_escapes = worst is not None and by_type[worst].events > 0
    colours = [DEFECT_COLOUR if n == worst and worst_escapes else "#888888" for n in names]
    y = np.arange(len(names))
    ax.barh(y, rates, color=colours, alpha=0.8)
    ax.errorbar(rates, y, xerr=[np.zeros_like(rates), uppers - rates], fmt="none", ecolor="black", capsize=4, linewidth=1)
    for i, n in enumerate(names):
        ev = by_type[n]
        ax.text(max(ev.upper, ev.rate) + 0.02, i, f"{ev.events}/{ev.trials}", va="center", fontsize=10)
    ax.set_yticks(y, names, fontsize=10)
    ax.set_xlim(0, 1.2)
    ax.set_xlabel(f"escape rate (defects passed); whisker: its upper bound at {cal.confidence or 0.95:.0%}")
    ax.set_title(f"Escapes per defect type — worst: {worst}" if worst_escapes else "Escapes per defect type — none escapes")
    ax.grid(alpha=0.3, axis="x")


def _text(ax, cal: Calibration) -> None:
    ax.axis("off")
    forced = [part for part in cal.note.split(" | ") if part.startswith("forced:")]
    extrapolated = "tail-extrapolation" in cal.method
    if forced or extrapolated:
        head, colour = "FORCED: written although refused (see notes)" if forced else "EXTRAPOLATED threshold: rests on a fitted tail", DEFECT_COLOUR
    else:
        head, colour = f"frames scoring above {cal.image_threshold:.4g} are rejected", "#1a7f37"
    ax.text(0.0, 1.0, head, va="top", ha="left", fontsize=13, fontweight="bold", color=colour, transform=ax.transAxes)
    lines = []
    for what, value, evidence in summary_rows(cal):
        lines.append(f"{what + ':':<19}{value}")
        if evidence:
            lines.extend(textwrap.wrap(evidence, width=110, initial_indent=" " * 19, subsequent_indent=" " * 19))
    notes = [part for part in cal.note.split(" | ") if part]
    if notes:
        lines.append("notes:")
        for part in notes:
            lines.extend(textwrap.wrap(part, width=124, initial_indent="  - ", subsequent_indent="    "))
    ax.text(0.0, 0.9, "\n".join(lines), va="top", ha="left", family="monospace", fontsize=10,
            bbox={"boxstyle": "round", "facecolor": "#f6f6f6", "edgecolor": "#999999"}, transform=ax.transAxes)
