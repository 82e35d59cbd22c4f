"""A calibration in words: the rows of the summary table printed by `fit`, `live` and `show`, and the report's text box."""

from __future__ import annotations

from edge.manifest import Calibration, RateEvidence


def summary_rows(cal: Calibration) -> list[tuple[str, str, str]]:
    """(what, value, evidence) rows, most important first."""
    conf = f"{cal.confidence:.0%}" if cal.confidence is not None else ""
    rows = [
        ("image threshold", f"{cal.image_threshold:.6g}", f"{cal.method}" + (f", target false-reject {_pct(cal.target_false_reject)}" if cal.target_false_reject is not None else "")),
        ("pixel threshold", f"{cal.pixel_threshold:.6g}", cal.pixel_method or ""),
    ]
    if cal.review_threshold is not None:
        rows.append(("review threshold", f"{cal.review_threshold:.6g}", f"uncertain band: {cal.review_threshold:.4g} < score <= {cal.image_threshold:.4g} is judged review"))
    if cal.false_reject is not None:
        planned = _planned(cal.expected_false_reject)
        if "tail-extrapolation" in cal.method:
            planned += " (extrapolated)"
        elif cal.expected_false_reject is not None and cal.expected_false_reject == cal.false_reject.upper:
            planned = f"<= {planned}"  # the order-statistic rule promises a bound, not a point estimate
        rows.append(("false-reject rate", planned, _evidence(cal.false_reject, "good samples above threshold", conf)))
    if cal.escape is not None:
        rows.append(("escape rate", _planned(cal.expected_escape), _evidence(cal.escape, "defects at or below threshold", conf)))
        rows.extend(_by_type_rows(cal.escape_by_type, conf))
    if cal.auroc is not None:
        rows.append(("image AUROC", f"{cal.auroc:.4f}", "good vs labelled defects"))
    if cal.good_stats is not None and cal.good_stats.count:
        s = cal.good_stats
        rows.append(("good scores", f"max {s.max:.4g}", f"n {s.count}, mean {s.mean:.4g}, sd {s.std:.3g}, p50 {s.p50:.4g}, p99 {s.p99:.4g}"))
    rows.append(("samples", f"{cal.n_good} good, {cal.n_defect} defect", cal.source))
    rows.append(("created", cal.created, ""))
    return rows


def worst_type(by_type: dict[str, RateEvidence]) -> str | None:
    """The type whose defects escape most often; ties go to the larger count (more evidence of the same rate)."""
    if not by_type:
        return None
    return max(by_type, key=lambda name: (by_type[name].rate, by_type[name].events))


def _by_type_rows(by_type: dict[str, RateEvidence], conf: str) -> list[tuple[str, str, str]]:
    """One row per defect type, most escapes first, then the worst named: a type that always escapes must not hide in the total."""
    worst = worst_type(by_type)
    if worst is None:
        return []
    order = sorted(by_type, key=lambda name: (-by_type[name].rate, name))
    rows = [(f"  {name}", _pct(by_type[name].rate), _evidence(by_type[name], f"{name} defects escape", conf)) for name in order]
    w = by_type[worst]
    if w.events == 0:
        rows.append(("worst defect type", "none escapes", f"every type caught on these samples ({len(by_type)} types)"))
    else:
        rows.append(("worst defect type", worst, f"{w.events} of {w.trials} escape ({_pct(w.rate)}); <= {_pct(w.upper)} at {conf} confidence"))
    return rows


def format_table(rows: list[tuple[str, str, str]]) -> str:
    width0 = max(len(r[0]) for r in rows)
    width1 = max(len(r[1]) for r in rows)
    return "\n".join(f"{a:<{width0}}  {b:<{width1}}  {c}".rstrip() for a, b, c in rows)


def one_line(cal: Calibration) -> str:
    """For history listings: when, how, the thresholds and the evidence in one line."""
    fr = "" if cal.false_reject is None else f"  FR {cal.false_reject.events}/{cal.false_reject.trials}"
    esc = "" if cal.escape is None else f"  escapes {cal.escape.events}/{cal.escape.trials}"
    return f"{cal.created or '(no date)':<25}  {cal.method:<34}  image {cal.image_threshold:<10.6g} pixel {cal.pixel_threshold:<10.6g}  n_good {cal.n_good}{fr}{esc}"


def _evidence(ev: RateEvidence, what: str, conf: str) -> str:
    bound = f"<= {_pct(ev.upper)} at {conf} confidence (Clopper-Pearson)"
    tag = ", in-sample: optimistic" if ev.in_sample else ""
    return f"{ev.events} of {ev.trials} {what} ({_pct(ev.rate)}); {bound}{tag}"


def _planned(rate: float | None) -> str:
    return "-" if rate is None else _pct(rate)


def _pct(rate: float | None) -> str:
    if rate is None or rate != rate:
        return "-"
    return f"{rate * 100:.3g}%"
