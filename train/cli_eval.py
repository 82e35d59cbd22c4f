"""`ssae train eval`: score a bundle on a labelled test split, print a table, write JSON."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from edge.errors import UserError, known_errors


def _num(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_table(result) -> str:
    """One row per defect type and the overall row; pixel columns read "-" without masks."""
    header = ("defect", "good", "defect", "img AUROC", "px AUROC", "AUPRO", "best F1", "F1 thr")
    rows = [
        (m.defect, str(m.n_good), str(m.n_defect), _num(m.image_auroc), _num(m.pixel_auroc), _num(m.aupro), _num(m.best_f1), _num(m.best_f1_threshold, 4))
        for m in (*result.per_defect, result.overall)
    ]
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]

    def line(cells):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    rule = "-" * len(line(header))
    out = [line(header), rule, *(line(r) for r in rows[:-1]), rule, line(rows[-1])]
    where = f"{result.data}" + (f" (category {result.category})" if result.category else "")
    out.insert(0, f"bundle {result.bundle} (model {result.model_id[:12]}) on {where}, {result.input_width_px}x{result.input_height_px}")
    if not result.has_masks:
        out.append("no ground_truth/ masks: image-level metrics only (pixel AUROC and AUPRO need masks)")
    if result.ignored_files:
        out.append(f"ignored {len(result.ignored_files)} non-image file(s), e.g. {result.ignored_files[0]}")
    out.append("best F1 threshold: score > threshold -> defect, chosen on these same images (optimistic)")
    return "\n".join(out)


def report_paths(json_out: Path) -> tuple[Path, Path]:
    """Beside the JSON: eval.json -> eval.scores.csv, eval.sheet.png."""
    stem = json_out.name[: -len(json_out.suffix)] if json_out.suffix else json_out.name
    return json_out.with_name(f"{stem}.scores.csv"), json_out.with_name(f"{stem}.sheet.png")


def register(app: typer.Typer) -> None:
    @app.command("eval")
    def eval_(
        bundle: Path = typer.Argument(..., help="Bundle folder (model.onnx + manifest.json)."),
        data: Path = typer.Argument(..., help="Dataset root (MVTec-AD layout) or a folder with good/ and defect folders."),
        category: Optional[str] = typer.Option(None, "--category", "-c", help="MVTec-AD category: evaluates DATA/<category>/test."),
        json_out: Optional[Path] = typer.Option(None, "--json", help="Write the full result as JSON here, with per-image scores (NAME.scores.csv) and a contact sheet of the worst cases (NAME.sheet.png) beside it."),
        threads: int = typer.Option(0, "--threads", min=0, help="ONNX Runtime threads (0: all cores)."),
        batch: int = typer.Option(16, "--batch", min=1, help="Images per inference call."),
        record: bool = typer.Option(True, "--record/--no-record", help="Store the metrics in the bundle's manifest (provenance.metrics)."),
    ) -> None:
        """Evaluate a bundle: image AUROC, pixel AUROC, AUPRO and best F1, per defect type and overall."""
        with known_errors():
            import msgspec

            from edge.files import atomic_write_bytes
            from train.evaluate import evaluate_bundle

            if json_out is not None and not json_out.parent.is_dir():
                raise UserError(f"--json {json_out}: folder {json_out.parent} does not exist; create it or choose another path")
            csv_out, sheet_out = report_paths(json_out) if json_out is not None else (None, None)
            result = evaluate_bundle(bundle, data, category, threads=threads, batch=batch, record=record, progress=sys.stderr.isatty(),
                                     scores_csv=csv_out, sheet_png=sheet_out)
            print(format_table(result))
            if json_out is not None:
                atomic_write_bytes(json_out, msgspec.json.format(msgspec.json.encode(result), indent=2) + b"\n")
                print(f"wrote {json_out}, {csv_out.name} (per-image scores) and {sheet_out.name} (worst goods and defects with their maps)")
            if record:
                print(f"recorded eval.* metrics in {bundle / 'manifest.json'}")
