"""A study's results as figures: rates with intervals, time to count, seed curves, confusions."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 -- the backend must be chosen first
from mlflow.tracking import MlflowClient  # noqa: E402
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID  # noqa: E402

from airsearch.evaluation.figures import confusion_figure, save_figure  # noqa: E402
from airsearch.evaluation.outcomes import ACCURACY  # noqa: E402
from airsearch.report.results import ConfigRow, StudyReport, experiment_of  # noqa: E402
from airsearch.report.tables import format_value  # noqa: E402
from airsearch.study.mlflow_layout import CONFIG_ID, KIND, OUTCOME, run_name  # noqa: E402


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
        log = numeric and min(x) > 0 and max(x) / min(x) >= 10  # spans a decade: log-sampled
        # Configurations sharing a value differ in other knobs: spread them a little.
        if log:
            xs = [a * 1.04 ** i for a, i in zip(x, _ranks(x), strict=True)]
            ax.set_xscale("log")
        else:
            xs = [a + i * 0.02 * (max(x) - min(x) or 1) for a, i in zip(x, _ranks(x), strict=True)]
        rates = [r.rate for r in rows]
        err = [[r.rate - r.low for r in rows], [r.high - r.rate for r in rows]]
        ax.errorbar(xs, rates, yerr=err, fmt="o", capsize=3)
        if not numeric:
            ax.set_xticks(range(len(levels)), levels, rotation=20)
        ax.set_ylim(-0.05, 1.05)
        ax.set_xlabel(key)
        ax.set_ylabel("convergence rate (Wilson 95%)")
        ax.set_title(f"{report.name}: rate vs {key}", fontsize=9)
        fig.tight_layout()
        path = out_dir / f"rate_vs_{key}.png"
        save_figure(fig, path)
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
    labels = [", ".join(f"{k.split('.')[-1]}={format_value(v)}" for k, v in r.values.items()) or
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
    save_figure(fig, path)
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
        if metric == ACCURACY and not math.isnan(row.threshold):
            ax.axhline(row.threshold, color="grey", lw=0.6, ls="--", label="threshold")
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
    save_figure(fig, path)
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
    names = _distinct_names(rows)
    for i, row in enumerate(rows):
        curve = row.time_to_count
        assert curve is not None
        colour = "black" if row is ref else f"C{i % 10}"
        steps = [0.0, *curve.steps]
        label = (f"{textwrap.shorten(names[row.config_id], 60)}{' [ref]' if row is ref else ''}"
                 f": median {curve.median_text()}")
        if row is not ref and not math.isnan(row.logrank_p):
            label += f", log-rank p {row.logrank_p:.2g}"
        ax.step(steps, [0.0, *curve.reached], where="post", color=colour, lw=1.5, label=label)
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
    save_figure(fig, path)
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


def _distinct_names(rows: list[ConfigRow]) -> dict[str, str]:
    """Per config id, its name without the key=value parts every row shares: a legend entry
    says what tells it apart."""
    parts = {row.config_id: _title(row).split(", ") for row in rows}
    changed = [set(p) for p in parts.values() if any("=" in part for part in p)]
    shared = set.intersection(*changed) if len(changed) > 1 else set()
    return {cid: ", ".join(p for p in ps if p not in shared) or ", ".join(ps)
            for cid, ps in parts.items()}


def _title(row: ConfigRow) -> str:
    """The configuration's MLflow run name (its keys in the study file's order)."""
    return row.name or run_name(row.values)


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
    save_figure(fig, path)
    return path
