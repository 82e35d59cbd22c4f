"""`ssae calibrate …`: set and check thresholds on site. Thin commands: parse, call one function, print.

The rules are documented in calibrate/rules.py and the README's "Calibration" section.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Annotated

import typer

from edge.errors import UserError, known_errors

app = typer.Typer(no_args_is_help=True)

REPORT_NAME = "calibration-report.png"

TargetOpt = Annotated[
    float, typer.Option("--target-false-reject", min=1e-9, max=0.5, help="Largest acceptable share of good parts rejected.")
]
ConfidenceOpt = Annotated[
    float, typer.Option("--confidence", min=0.5, max=0.999999, help="How sure the false-reject bound must be (and the level of every bound reported).")
]
ForceOpt = Annotated[bool, typer.Option("--force", help="Write a calibration that is refused (too few samples, defects scoring low, odd images, a live stream with too many frames judged defect); the reasons go into its note.")]
ReportOpt = Annotated[Path | None, typer.Option("--report", help=f"Where to save the report PNG (default: BUNDLE/{REPORT_NAME}).")]
ReviewOpt = Annotated[
    float | None,
    typer.Option("--review-factor", min=0.01, max=0.99, help="Add an uncertain band: scores above FACTOR x the image threshold (and at or below it) are judged 'review' (e.g. 0.8)."),
]
ClientKeyOpt = Annotated[Path | None, typer.Option("--client-key", help="CURVE: this client's NAME.key_secret (from `ssae edge keys`).")]
ServerKeyOpt = Annotated[Path | None, typer.Option("--server-key", help="CURVE: the daemon's public NAME.key.")]


def _warn(line: str) -> None:
    print(f"warning: {line}", file=sys.stderr, flush=True)


def _need_fit_packages() -> None:
    """fit and live need scipy (the rules' binomial bounds) and matplotlib (the report): say so before any scoring."""
    missing = []
    for module in ("scipy.stats", "matplotlib"):
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(module.split(".")[0])
    if missing:
        raise UserError(
            f"this command needs {' and '.join(missing)}, which this Python lacks; install ssae with its calibrate extra "
            "(pip install '/path/to/ssae[calibrate]'; the edge box's [adapter] extra includes it)"
        )


@app.command()
def fit(
    bundle: Annotated[Path, typer.Argument(help="Bundle folder (model.onnx + manifest.json); its manifest receives the calibration.")],
    good: Annotated[list[Path], typer.Option("--good", help="Folder of good samples (repeat for several).")],
    defect: Annotated[list[Path] | None, typer.Option("--defect", help="Folder of defective samples, or of one subfolder per defect type (repeat).")] = None,
    masks: Annotated[Path | None, typer.Option("--masks", help="Ground-truth masks of the defects (<type>/<name>_mask.png or <name>.png): fits the pixel threshold.")] = None,
    target_false_reject: TargetOpt = 0.001,
    confidence: ConfidenceOpt = 0.95,
    rule: Annotated[str, typer.Option("--rule", help="frr: lowest threshold whose false-reject rate meets the target (highest recall); best-f1: needs --defect.")] = "frr",
    report: ReportOpt = None,
    force: ForceOpt = False,
    crop: Annotated[str | None, typer.Option("--crop", help="The camera's crop X,Y,W,H from the edge config, so the scores match the line.")] = None,
    backend: Annotated[str, typer.Option("--backend", help="Inference backend, as on the line.")] = "onnxruntime",
    threads: Annotated[int, typer.Option("--threads", min=0, help="Inference threads (0: all cores).")] = 0,
    batch: Annotated[int, typer.Option("--batch", min=1, max=256, help="Images per inference batch.")] = 8,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bars.")] = False,
    review_factor: ReviewOpt = None,
) -> None:
    """Score sample folders with the bundle, choose thresholds, write them into the manifest and save a report."""
    with known_errors():
        _need_fit_packages()
        from calibrate.fit import FitOptions, fit_folders

        if rule not in ("frr", "best-f1"):
            raise UserError(f"--rule {rule!r} is unknown; use frr or best-f1")
        options = FitOptions(
            target_false_reject=target_false_reject, confidence=confidence, rule=rule, force=force,
            crop=_parse_crop(crop), backend=backend, threads=threads, batch=batch, progress=not quiet, review_factor=review_factor,
        )
        result, model_id = fit_folders(bundle, good, defect or [], masks, options)
        _write(bundle, report, result, model_id, title=f"Calibration of {bundle.name} (model {model_id[:12]})")


@app.command()
def show(bundle: Annotated[Path, typer.Argument(help="Bundle folder.")]) -> None:
    """Print the bundle's current calibration and its history (oldest first)."""
    with known_errors():
        from calibrate.summary import format_table, one_line, summary_rows
        from edge.manifest import read_manifest

        manifest = read_manifest(bundle)
        print(f"bundle {bundle}  model {manifest.model_id[:12]}  input {manifest.input.width_px}x{manifest.input.height_px}x{manifest.input.channels}")
        cal = manifest.calibration
        if cal is None:
            print("no calibration: the daemon judges frames 'unknown' until one is fitted (`ssae calibrate fit`)")
        else:
            print("\ncurrent calibration")
            print(format_table(summary_rows(cal)))
            if cal.note:
                print("notes:")
                for part in cal.note.split(" | "):
                    print(f"  - {part}")
        print(f"\nhistory ({len(manifest.history)}, oldest first)")
        for i, old in enumerate(manifest.history, 1):
            print(f"{i:>3}. {one_line(old)}")


def _write(bundle: Path, report: Path | None, result, model_id: str, *, title: str) -> None:
    """Report first, then the manifest (both atomic); print the summary table."""
    from calibrate.report import write_report
    from calibrate.store import store_calibration

    for line in result.warnings:
        _warn(line)
    report_path = report or bundle / REPORT_NAME
    try:
        write_report(report_path, result.calibration, result.good, result.defect, title=title)
    except OSError as e:
        raise UserError(f"cannot write the report {report_path} ({e}); choose another --report; the manifest is unchanged") from None
    try:
        manifest = store_calibration(bundle, result.calibration, model_id=model_id)
    except OSError as e:  # disk full, read-only bundle: the atomic write left the old manifest as it was
        raise UserError(f"cannot write {bundle / 'manifest.json'} ({e}); the previous calibration is intact") from None
    _print_result(result.calibration, result.image_detail, result.pixel_detail)
    if result.review_detail:
        print(result.review_detail)
    print(f"\nwrote the calibration into {bundle / 'manifest.json'} ({len(manifest.history)} earlier in history); report: {report_path}")


def _print_result(cal, image_detail: str, pixel_detail: str) -> None:
    from calibrate.summary import format_table, summary_rows

    print(format_table(summary_rows(cal)))
    print(f"\nimage threshold: {image_detail}")
    print(f"pixel threshold: {pixel_detail}")


def _parse_crop(text: str | None):
    from edge.preprocess import Roi

    if text is None:
        return None
    try:
        x, y, w, h = (int(v) for v in text.split(","))
    except ValueError:
        raise UserError(f"--crop {text!r} is not X,Y,W,H in pixels, e.g. --crop 100,40,512,512") from None
    if min(x, y) < 0 or min(w, h) < 1:
        raise UserError(f"--crop {text!r}: x and y must be >= 0 and the width and height >= 1")
    return Roi(x, y, w, h)


@app.command()
def live(
    endpoint: Annotated[str, typer.Argument(help="The daemon's publish endpoint, e.g. tcp://10.0.0.5:5555.")],
    bundle: Annotated[Path, typer.Option("--bundle", help="The bundle the daemon runs; its manifest receives the calibration.")],
    frames: Annotated[int, typer.Option("--frames", min=1, help="Scores of known-good production to gather.")],
    target_false_reject: TargetOpt = 0.001,
    confidence: ConfidenceOpt = 0.95,
    camera: Annotated[list[str] | None, typer.Option("--camera", help="Only these cameras (repeat); default all.")] = None,
    idle_timeout: Annotated[float, typer.Option("--idle-timeout", min=0.5, help="Give up after this many seconds without a scored frame.")] = 10.0,
    timeout: Annotated[float | None, typer.Option("--timeout", min=1, help="Give up when the frames are not in after this many seconds.")] = None,
    report: ReportOpt = None,
    force: ForceOpt = False,
    client_key: ClientKeyOpt = None,
    server_key: ServerKeyOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar.")] = False,
    review_factor: ReviewOpt = None,
) -> None:
    """Gather scores of known-good production from a running daemon and fit them by the good-only rule."""
    with known_errors():
        _need_fit_packages()
        from calibrate.fit import FitOptions
        from calibrate.live import fit_live

        options = FitOptions(target_false_reject=target_false_reject, confidence=confidence, force=force, progress=not quiet, review_factor=review_factor)
        from edge.security import curve_client_from_files

        configure = curve_client_from_files(client_key, server_key)
        result, model_id = fit_live(bundle, endpoint, frames=frames, options=options, cameras=camera or None,
                                    idle_timeout_s=idle_timeout, timeout_s=timeout, configure=configure)
        _write(bundle, report, result, model_id, title=f"Live calibration of {bundle.name} (model {model_id[:12]})")
        print(f"apply it to the daemon with: ssae calibrate apply {bundle} --control tcp://HOST:PORT")


@app.command()
def apply(
    bundle: Annotated[Path, typer.Argument(help="The calibrated bundle (the one the daemon runs).")],
    control: Annotated[str, typer.Option("--control", help="The daemon's control endpoint, e.g. tcp://10.0.0.5:5556.")],
    thresholds_only: Annotated[bool, typer.Option("--thresholds-only", help="Send the thresholds themselves instead of asking the daemon to reload its bundle (not kept across a daemon restart).")] = False,
    timeout: Annotated[float, typer.Option("--timeout", min=0.1, help="Seconds to wait for each reply.")] = 5.0,
    client_key: ClientKeyOpt = None,
    server_key: ServerKeyOpt = None,
) -> None:
    """Make a running daemon judge with the bundle's current calibration, without a restart or a lost frame."""
    with known_errors():
        from calibrate.apply import apply_calibration
        from edge.security import curve_client_from_files

        configure = curve_client_from_files(client_key, server_key)
        reply, cal = apply_calibration(bundle, control, thresholds_only=thresholds_only, timeout_s=timeout, configure=configure)
        how = "thresholds sent" if thresholds_only else "bundle reloaded"
        print(f"{control}: {how}; the daemon now judges with image threshold {reply.image_threshold:.6g}, pixel threshold {reply.pixel_threshold:.6g} "
              f"(model {reply.model_id[:12]}, calibration {cal.method} of {cal.created or 'unknown date'})")
