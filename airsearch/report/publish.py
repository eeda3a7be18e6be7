"""A study's report written out: tables and figures to a folder and onto its MLflow report run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from airsearch.report.plots import (
    CURVES,
    plot_configurations,
    plot_confusions,
    plot_importances,
    plot_rates,
    plot_seed_curves,
    plot_time_to_count,
)
from airsearch.report.results import StudyReport
from airsearch.report.tables import render
from airsearch.study.tracking import backfill_time_to_count, log_report


@dataclass
class WrittenReport:
    paths: list[Path]  # tables and figures in the report folder
    run_id: str  # the study's MLflow report run, where they are logged too


def write_report(tracking_uri: str, report: StudyReport, out_dir: Path) -> WrittenReport:
    """Write the tables and plots to out_dir and log them on the study's report run."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = plot_rates(report, out_dir)
    figures = [plot_configurations(report, out_dir), plot_time_to_count(report, out_dir),
               plot_confusions(report, out_dir)] + [
        plot_seed_curves(tracking_uri, report, metric, out_dir) for metric in CURVES]
    paths += [path for path in figures if path is not None]
    importance = plot_importances(report, out_dir)
    if importance is not None:
        paths.append(importance)
    pictures = [path for path in paths if path.suffix == ".png"]
    for fmt, suffix in (("markdown", "md"), ("csv", "csv"), ("json", "json")):
        path = out_dir / f"report.{suffix}"
        text = render(report, fmt)
        if fmt == "markdown":  # the figures beside it, shown where the table is read
            text += "\n\n" + "\n".join(f"![{png.stem}]({png.name})" for png in pictures) + "\n"
        path.write_text(text)
        paths.append(path)
    paths += [png.with_suffix(".pdf") for png in pictures if png.with_suffix(".pdf").exists()]
    backfill_time_to_count(tracking_uri, [
        (row.run_id, row.time_to_count, [[t.reached, t.last] for t in row.times or []])
        for row in report.rows])
    best = report.best
    run_id = log_report(tracking_uri, report.name, paths, configurations=len(report.rows),
                        best=(best.config_id, best.rate) if best else None)
    return WrittenReport(paths, run_id)
