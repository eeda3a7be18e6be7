"""What a study found, read back from MLflow: tables and plots of convergence rates.

Reads only complete configurations (the parent runs the driver marked complete), so a
report taken while a study runs, or after it was killed, never shows half-logged rows.
"""

from __future__ import annotations

import csv
import io
import json
import math
import textwrap
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 -- the backend must be chosen first
from mlflow.entities import Metric  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID  # noqa: E402

from airsearch.stats import ALPHA, NEGLIGIBLE, Comparison, Rate, can_tell, compare, wilson  # noqa: E402
from airsearch.study.tracking import (  # noqa: E402
    ALL_OUTCOMES,
    BEST,
    COMPLETE,
    CONFIG_ID,
    CONFUSION,
    ERROR_TAG,
    KIND,
    MODE,
    OUTCOME,
    OVERRIDES,
    REFERENCE,
    SHARE_REACHED,
    STORAGE,
    STUDY,
    TIMES,
    TRIAL_COUNT,
    VARIED,
)
from airsearch.survival import SeedTime, TimeToCount, kaplan_meier, logrank_p, seed_time  # noqa: E402,E501
from airsearch.training.figures import confusion_figure  # noqa: E402
from airsearch.training.outcomes import ACCURACY  # noqa: E402


class StudyNotFound(LookupError):
    """No MLflow experiment holds a study of that name."""


@dataclass
class ConfigRow:
    """One configuration's result: k of n seeds converged, with its Wilson 95% interval."""

    config_id: str
    values: dict[str, Any]
    k: int
    n: int
    rate: float
    low: float
    high: float
    objective: float
    outcomes: dict[str, int]
    mean_steps_to_converge: float | None
    mean_seconds_to_converge: float | None
    error: str
    vs_reference: Comparison | None = None  # this rate minus the reference's; None for itself
    confusion: list[list[int]] | None = None  # true x inferred count, summed over its seeds
    times: list[SeedTime] | None = None  # per seed, when it first reached the threshold
    run_id: str = ""  # the configuration's parent run
    logrank_p: float = math.nan  # time to count against the reference's (log-rank)

    @property
    def time_to_count(self) -> TimeToCount | None:
        return kaplan_meier(self.times) if self.times else None


@dataclass
class StudyReport:
    name: str
    mode: str
    varied: list[str]
    expected: int
    storage: str
    rows: list[ConfigRow]  # best first
    running: int
    reference: str = ""  # config id of the reference ('' when the study has none)

    @property
    def best(self) -> ConfigRow | None:
        return self.rows[0] if self.rows else None

    @property
    def reference_row(self) -> ConfigRow | None:
        return next((r for r in self.rows if r.config_id == self.reference), None)

    def verdict(self) -> str:
        """One line on what the tests against the reference can say."""
        ref = self.reference_row
        if ref is None:
            return ("no reference configuration complete: nothing tested" if self.reference
                    else "no reference configuration named: nothing tested")
        others = [r for r in self.rows if r is not ref]
        if others and not any(can_tell(r.n, ref.n) for r in others):
            return (f"too small to tell: with {ref.n} reference seeds even all vs none "
                    f"cannot reach p < {ALPHA}")
        found = [r.config_id for r in others
                 if r.vs_reference and r.vs_reference.verdict in ("better", "worse")]
        untold = sum(1 for r in others
                     if r.vs_reference and r.vs_reference.verdict == "too small to tell")
        text = (f"differs from the reference at p < {ALPHA} (Fisher): {', '.join(found)}"
                if found else f"no configuration differs from the reference at p < {ALPHA}")
        if untold:
            text += (f"; {untold} of {len(others)} too small to tell (their Newcombe interval "
                     f"allows a difference of {NEGLIGIBLE} or more)")
        return text


def experiment_of(client: MlflowClient, name: str) -> Any:
    experiment = client.get_experiment_by_name(name)
    if experiment is None or experiment.tags.get(STUDY) != name:
        known = ", ".join(study_names(client)) or "none yet"
        raise StudyNotFound(f"no study named {name!r} in this tracking store; studies: {known}")
    return experiment


def study_names(client: MlflowClient) -> list[str]:
    return [e.name for e in client.search_experiments(max_results=1000) if STUDY in e.tags]


def load_report(tracking_uri: str, name: str) -> StudyReport:
    """Collect every complete configuration of a study, best first (objective, then id)."""
    client = MlflowClient(tracking_uri)
    experiment = experiment_of(client, name)
    runs = client.search_runs([experiment.experiment_id],
                              f"tags.`{KIND}` = 'configuration'", max_results=50000)
    rows = [_row(run) for run in runs if run.data.tags.get(COMPLETE) == "1"]
    untimed = [row for row in rows if row.times is None]
    if untimed:  # logged before time to count was: read it off the seed runs' curves
        _times_from_seed_runs(client, experiment.experiment_id, untimed,
                              {run.info.run_id: run for run in runs})
    rows.sort(key=lambda r: (-r.objective, r.config_id))
    tags = experiment.tags
    reference = tags.get(REFERENCE, "")
    ref = next((r for r in rows if r.config_id == reference), None)
    if ref is not None:
        for row in rows:
            if row is not ref:
                row.vs_reference = compare(Rate(row.k, row.n, row.low, row.high),
                                           Rate(ref.k, ref.n, ref.low, ref.high))
                if row.times and ref.times:
                    row.logrank_p = logrank_p(row.times, ref.times)
    return StudyReport(name=name, mode=tags.get(MODE, "?"),
                       varied=[k for k in tags.get(VARIED, "").split(",") if k],
                       expected=int(tags.get(TRIAL_COUNT, 0)),
                       storage=tags.get(STORAGE, ""), rows=rows,
                       running=len(runs) - len(rows), reference=reference)


def _times_from_seed_runs(client: MlflowClient, experiment_id: str, rows: list[ConfigRow],
                          parents: dict[str, Any]) -> None:
    seeds = client.search_runs([experiment_id], f"tags.`{KIND}` = 'seed'", max_results=50000)
    for row in rows:
        threshold = float(parents[row.run_id].data.params.get("eval.threshold", "nan"))
        times = []
        for run in seeds:
            if run.data.tags.get(MLFLOW_PARENT_RUN_ID) != row.run_id:
                continue
            history = sorted(client.get_metric_history(run.info.run_id, ACCURACY),
                             key=lambda m: m.step)
            times.append(seed_time([{"step": m.step, ACCURACY: m.value} for m in history],
                                   ACCURACY, threshold))
        row.times = times or None


def _row(run: Any) -> ConfigRow:
    m, tags = run.data.metrics, run.data.tags
    k, n = int(m["converged"]), int(m["seeds_done"])
    rate = wilson(k, n)
    return ConfigRow(
        config_id=tags[CONFIG_ID], values=json.loads(tags.get(OVERRIDES, "{}")),
        k=k, n=n, rate=rate.value, low=rate.low, high=rate.high, objective=m["objective"],
        outcomes={o: int(m.get(f"outcome/{o}", 0)) for o in ALL_OUTCOMES
                  if m.get(f"outcome/{o}", 0)},
        mean_steps_to_converge=m.get("mean_steps_to_converge"),
        mean_seconds_to_converge=m.get("mean_seconds_to_converge"),
        error=tags.get(ERROR_TAG, "").split("\n")[0],
        confusion=json.loads(tags[CONFUSION]) if CONFUSION in tags else None,
        times=[SeedTime(reached, last) for reached, last in json.loads(tags[TIMES])]
        if TIMES in tags else None, run_id=run.info.run_id)


def _cells(report: StudyReport, row: ConfigRow) -> dict[str, str]:
    steps = row.mean_steps_to_converge
    secs = row.mean_seconds_to_converge
    cells = {"config": row.config_id}
    cells.update({key: _fmt(row.values.get(key, "-")) for key in report.varied})
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
        "error": row.error})
    return cells


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


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


def plot_rates(report: StudyReport, out_dir: Path) -> list[Path]:
    """One figure per varied knob: each configuration's rate with its Wilson interval."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for key in report.varied:
        rows = [r for r in report.rows if key in r.values]
        if not rows:
            continue
        values = [r.values[key] for r in rows]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        if numeric:
            x = [float(v) for v in values]
        else:
            levels = sorted({str(v) for v in values})
            x = [levels.index(str(v)) for v in values]
        fig, ax = plt.subplots(figsize=(5, 3.5))
        # Configurations sharing a value differ in other knobs: spread them a little.
        spread = [i * 0.02 * (max(x) - min(x) or 1) for i in _ranks(x)]
        xs = [a + b for a, b in zip(x, spread, strict=True)]
        rates = [r.rate for r in rows]
        err = [[r.rate - r.low for r in rows], [r.high - r.rate for r in rows]]
        ax.errorbar(xs, rates, yerr=err, fmt="o", capsize=3)
        if numeric and min(x) > 0 and max(x) / min(x) > 100:
            ax.set_xscale("log")
        if not numeric:
            ax.set_xticks(range(len(levels)), levels, rotation=20)
        ax.set_ylim(-0.05, 1.05)
        ax.set_xlabel(key)
        ax.set_ylabel("convergence rate (Wilson 95%)")
        ax.set_title(f"{report.name}: rate vs {key}", fontsize=9)
        fig.tight_layout()
        path = out_dir / f"rate_vs_{key}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths


def plot_configurations(report: StudyReport, out_dir: Path) -> Path | None:
    """Every configuration's rate with its Wilson interval, labelled by what it changes;
    the reference first, in grey."""
    if not report.rows:
        return None
    out_dir.mkdir(parents=True, exist_ok=True)
    ref = report.reference_row
    rows = ([ref] if ref else []) + [r for r in report.rows if r is not ref]
    labels = [", ".join(f"{k.split('.')[-1]}={_fmt(v)}" for k, v in r.values.items()) or
              "(fixed config)" for r in rows]
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(rows) + 1.4))
    y = list(range(len(rows)))[::-1]
    for yi, row in zip(y, rows, strict=True):
        colour = "grey" if row is ref else "C0"
        ax.errorbar([row.rate], [yi], xerr=[[row.rate - row.low], [row.high - row.rate]],
                    fmt="o", capsize=3, color=colour)
        ax.annotate(f"{row.k}/{row.n}", (row.rate, yi), textcoords="offset points",
                    xytext=(0, 6), ha="center", fontsize=7)
    ax.set_yticks(y, labels, fontsize=7)
    ax.set_xlim(-0.05, 1.05)
    ax.set_xlabel("convergence rate (Wilson 95%)")
    ax.set_title(f"{report.name}" + (" (grey: reference)" if ref else ""), fontsize=9)
    fig.tight_layout()
    path = out_dir / "rate_by_configuration.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


CURVES = (ACCURACY, "eval/presence_step_1", "eval/iou")
OUTCOME_COLOURS = {"converged": "C2", "collapsed_to_zero": "C3", "collapsed_to_max": "C1",
                   "over_counting": "C4", "under_counting": "C0",
                   "diverged": "k", "error": "grey"}


def plot_seed_curves(tracking_uri: str, report: StudyReport, metric: str, out_dir: Path
                     ) -> Path | None:
    """One panel per configuration: every seed's `metric` against training step, coloured by
    the seed's outcome, so a collapse shows when it happened, not only that it did."""
    if not report.rows:
        return None
    client = MlflowClient(tracking_uri)
    experiment = experiment_of(client, report.name)
    seeds = client.search_runs([experiment.experiment_id], f"tags.`{KIND}` = 'seed'",
                               max_results=50000)
    parents = {r.info.run_id: r.data.tags.get(CONFIG_ID) for r in client.search_runs(
        [experiment.experiment_id], f"tags.`{KIND}` = 'configuration'", max_results=50000)}
    by_config: dict[str, list[Any]] = {}
    for run in seeds:
        by_config.setdefault(parents.get(run.data.tags.get(MLFLOW_PARENT_RUN_ID), ""), []
                             ).append(run)
    ref = report.reference_row
    rows = ([ref] if ref else []) + [r for r in report.rows if r is not ref]
    cols = min(3, len(rows))
    nrows = -(-len(rows) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.3 * cols, 2.4 * nrows), squeeze=False,
                             sharex=True, sharey=True)
    for ax, row in zip(axes.flat, rows, strict=False):
        for run in by_config.get(row.config_id, []):
            history = sorted(client.get_metric_history(run.info.run_id, metric),
                             key=lambda m: m.step)
            outcome = run.data.tags.get(OUTCOME, "error")
            ax.plot([m.step for m in history], [m.value for m in history], lw=1,
                    color=OUTCOME_COLOURS.get(outcome, "grey"), label=outcome)
        ax.set_title(textwrap.fill(_title(row) + (" [ref]" if row is ref else ""), 60),
                     fontsize=6)
        ax.tick_params(labelsize=7)
    for ax in axes.flat[len(rows):]:
        ax.axis("off")
    for col in range(cols):  # the lowest panel of each column, so the legend never covers it
        lowest = axes[(len(rows) - 1 - col) // cols, col]
        lowest.tick_params(labelbottom=True)
        lowest.set_xlabel("training step", fontsize=8)
    handles = {h.get_label(): h for ax in axes.flat for h in ax.get_lines()}
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=4, fontsize=7,
               frameon=False)
    fig.supylabel(metric, fontsize=8)
    fig.tight_layout(rect=(0, 0.3 / fig.get_figheight(), 1, 1))
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"seeds_{metric.replace('/', '_')}.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_time_to_count(report: StudyReport, out_dir: Path) -> Path | None:
    """Kaplan-Meier: the share of each configuration's seeds that has reached the threshold
    by each step, with its 95% band; the reference in black. Seeds that never reached it
    are censored where they stopped (a tick)."""
    ref = report.reference_row
    rows = [r for r in ([ref] if ref else []) + [r for r in report.rows if r is not ref]
            if r.times]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for i, row in enumerate(rows):
        curve = row.time_to_count
        assert curve is not None
        colour = "black" if row is ref else f"C{i % 10}"
        steps = [0.0, *curve.steps]
        label = f"{_title(row)}{' [ref]' if row is ref else ''}: median {curve.median_text()}"
        if row is not ref and not math.isnan(row.logrank_p):
            label += f", log-rank p {row.logrank_p:.2g}"
        ax.step(steps, [0.0, *curve.reached], where="post", color=colour, lw=1.5,
                label=textwrap.shorten(label, 90))
        ax.fill_between(steps, [0.0, *curve.low], [0.0, *curve.high], step="post",
                        color=colour, alpha=0.08)
        censored = [t.last for t in row.times or [] if t.reached is None]
        if censored:
            ax.plot(censored, [curve.share_by(s) for s in censored], "|", color=colour, ms=9)
    ax.axhline(0.5, color="grey", lw=0.6, ls=":")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("training step")
    ax.set_ylabel("share of seeds at the threshold (Kaplan-Meier)")
    ax.set_title(f"{report.name}: time to count", fontsize=9)
    ax.legend(fontsize=6, loc="upper left")
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "time_to_count.png"
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return path


def plot_confusions(report: StudyReport, out_dir: Path) -> Path | None:
    """Each configuration's count confusion matrix over all its seeds (reference first)."""
    ref = report.reference_row
    rows = [r for r in ([ref] if ref else []) + [r for r in report.rows if r is not ref]
            if r.confusion]
    if not rows:
        return None
    titles = [textwrap.fill(_title(row) + (" [ref]" if row is ref else ""), 40) for row in rows]
    return confusion_figure([row.confusion for row in rows], titles,
                            out_dir / "confusion_by_configuration.png")


def _title(row: ConfigRow) -> str:
    return ", ".join(f"{k.split('.')[-1]}={_fmt(v)}" for k, v in row.values.items()) or \
        "(fixed config)"


def _ranks(x: list[float]) -> list[int]:
    """0 for the first configuration at a value, 1 for the second, ..."""
    seen: dict[float, int] = {}
    out = []
    for v in x:
        out.append(seen.get(v, 0))
        seen[v] = seen.get(v, 0) + 1
    return out


def plot_importances(report: StudyReport, out_dir: Path) -> Path | None:
    """Optuna's parameter importances for the objective (None if it cannot tell yet)."""
    import optuna

    storage = f"sqlite:///{Path(report.storage) / 'optuna.db'}"
    if report.mode != "optuna" or not (Path(report.storage) / "optuna.db").exists():
        return None
    try:
        study = optuna.load_study(study_name=report.name, storage=storage)
        importances = optuna.importance.get_param_importances(study)
    except (ValueError, RuntimeError, KeyError):  # too few complete trials, one value, ...
        return None
    if not importances:
        return None
    out_dir.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5, 0.4 * len(importances) + 1.5))
    names = list(importances)[::-1]
    ax.barh(names, [importances[n] for n in names])
    ax.set_xlabel("importance for the objective (Optuna, PED-ANOVA)")
    fig.tight_layout()
    path = out_dir / "param_importances.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _backfill_time_to_count(client: MlflowClient, report: StudyReport) -> None:
    """Configurations logged before time to count was get its curve and median, so MLflow
    compares them like the others (idempotent: only where the curve is missing)."""
    for row in report.rows:
        run = client.get_run(row.run_id)
        curve = row.time_to_count
        if curve is None or SHARE_REACHED in run.data.metrics:
            continue
        params = run.data.params
        every, steps = int(params["train.eval_every"]), int(params["train.steps"])
        now = int(time.time() * 1000)
        points = [Metric(SHARE_REACHED, curve.share_by(step), now, step)
                  for step in range(every, steps + 1, every)]
        if curve.median is not None:
            points.append(Metric("median_steps_to_threshold", curve.median, now, 0))
        client.log_batch(row.run_id, metrics=points)
        client.set_tag(row.run_id, TIMES, json.dumps([[t.reached, t.last]
                                                      for t in row.times or []]))


def write_report(tracking_uri: str, report: StudyReport, out_dir: Path) -> list[Path]:
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
    for fmt, suffix in (("markdown", "md"), ("csv", "csv"), ("json", "json")):
        path = out_dir / f"report.{suffix}"
        path.write_text(render(report, fmt))
        paths.append(path)
    client = MlflowClient(tracking_uri)
    _backfill_time_to_count(client, report)
    experiment = experiment_of(client, report.name)
    found = client.search_runs([experiment.experiment_id], f"tags.`{KIND}` = 'report'")
    run_id = (found[0].info.run_id if found else client.create_run(
        experiment.experiment_id, run_name="report",
        tags={KIND: "report", STUDY: report.name}).info.run_id)
    for path in paths:
        client.log_artifact(run_id, str(path))
    # Idempotent: a report taken again adds a point only where the study has moved on.
    best = report.best
    values = {"configurations_complete": float(len(report.rows))}
    if best is not None:
        values["best_convergence_rate"] = best.rate
        client.set_tag(run_id, BEST, best.config_id)
    logged = client.get_run(run_id).data.metrics
    for key, value in values.items():
        if logged.get(key) != value:
            client.log_metric(run_id, key, value, step=len(report.rows))
    client.set_terminated(run_id, "FINISHED")
    return paths
