"""A study's results as text: an aligned table, CSV, JSON or Markdown."""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import asdict
from typing import Any

from airsearch.report.results import ConfigRow, StudyReport
from airsearch.study.mlflow_layout import short_value


def _cells(report: StudyReport, row: ConfigRow) -> dict[str, str]:
    steps = row.mean_steps_to_converge
    secs = row.mean_seconds_to_converge
    cells = {"config": row.config_id}
    cells.update({key: format_value(row.values.get(key, "-")) for key in report.varied})
    cells.update({
        "converged": f"{row.k}/{row.n}", "rate": f"{row.rate:.2f}",
        "wilson95": f"[{row.low:.2f}, {row.high:.2f}]",
        "outcomes": " ".join(f"{o}:{c}" for o, c in row.outcomes.items()),
        "steps_to_converge": "-" if steps is None else f"{steps:.0f}",
        "seconds_to_converge": "-" if secs is None else f"{secs:.1f}"})
    curve = row.time_to_count
    cells["median_steps_to_threshold"] = "-" if curve is None else curve.median_text()
    if report.reference:
        c = row.vs_reference
        cells.update({"vs_reference": "reference" if row.config_id == report.reference
                      else "-" if c is None else f"{c.difference:+.2f}",
                      "newcombe95": "-" if c is None else f"[{c.low:+.2f}, {c.high:+.2f}]",
                      "fisher_p": "-" if c is None else f"{c.p_value:.3g}",
                      "verdict": "-" if c is None else c.verdict,
                      "logrank_p": "-" if math.isnan(row.logrank_p) else f"{row.logrank_p:.3g}"})
    if row.error:
        cells["outcomes"] += f" ({row.error[:60]})"
    if row.stopped_early_at is not None:
        cells["outcomes"] += f" (stopped early at step {row.stopped_early_at})"
    return cells


def _csv_row(report: StudyReport, row: ConfigRow) -> dict[str, Any]:
    """One configuration as numbers for a spreadsheet: empty cells where nothing applies."""
    c = row.vs_reference
    cells: dict[str, Any] = {"config": row.config_id}
    cells.update({key: row.values.get(key, "") for key in report.varied})
    cells.update({
        "converged": row.k, "seeds": row.n, "rate": row.rate, "wilson_low": row.low,
        "wilson_high": row.high,
        "outcomes": " ".join(f"{o}:{n}" for o, n in row.outcomes.items()),
        "steps_to_converge": "" if row.mean_steps_to_converge is None
        else row.mean_steps_to_converge,
        "seconds_to_converge": "" if row.mean_seconds_to_converge is None
        else row.mean_seconds_to_converge,
        "is_reference": int(row.config_id == report.reference),
        "vs_reference": "" if c is None else c.difference,
        "newcombe_low": "" if c is None else c.low,
        "newcombe_high": "" if c is None else c.high,
        "fisher_p": "" if c is None else c.p_value,
        "verdict": "" if c is None else c.verdict,
        "median_steps_to_threshold": "" if (curve := row.time_to_count) is None
        or curve.median is None else curve.median,
        "logrank_p": "" if math.isnan(row.logrank_p) else row.logrank_p,
        "stopped_early_at": "" if row.stopped_early_at is None else row.stopped_early_at,
        "error": row.error})
    return cells


def format_value(value: Any) -> str:
    """A knob's value as a cell: as written when short (0.999999 stays 0.999999), else to 3
    significant digits; the same as in run names."""
    return short_value(value)


def render(report: StudyReport, fmt: str) -> str:
    """The report as a text table, CSV, JSON or Markdown."""
    if fmt == "json":
        return json.dumps({"study": report.name, "mode": report.mode, "varied": report.varied,
                           "expected_configurations": report.expected,
                           "best": report.best.config_id if report.best else None,
                           "reference": report.reference or None,
                           "verdict": report.verdict(),
                           "configurations": [asdict(r) for r in report.rows]}, indent=2)
    table = [_cells(report, row) for row in report.rows]
    header = list(table[0]) if table else ["config", "converged"]
    if fmt == "csv":
        numbers = [_csv_row(report, row) for row in report.rows]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(numbers[0]) if numbers else header)
        writer.writeheader()
        writer.writerows(numbers)
        return buffer.getvalue()
    if fmt == "markdown":
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(r[h] for h in header) + " |" for r in table]
    else:
        widths = {h: max([len(h)] + [len(r[h]) for r in table]) for h in header}
        lines = ["  ".join(h.ljust(widths[h]) for h in header)]
        lines += ["  ".join(r[h].ljust(widths[h]) for h in header) for r in table]
    title = (f"study {report.name} ({report.mode}): {len(report.rows)}/{report.expected} "
             f"configurations complete")
    best = report.best
    footer = (f"best: {best.config_id} {best.k}/{best.n} [{best.low:.2f}, {best.high:.2f}] "
              f"(ranked by rate, ties by mean held-out count accuracy)" if best else "no "
              "complete configuration yet")
    tests = (f"reference: {report.reference}; vs_reference = rate minus the reference's, "
             f"Newcombe 95% interval, Fisher exact p; median_steps_to_threshold = the "
             f"Kaplan-Meier median step by which half the seeds first reached the threshold, "
             f"95% interval; logrank_p = time to count against the reference's, log-rank\n"
             f"{report.verdict()}")
    return "\n".join([title, "", *lines, "", footer, tests])
