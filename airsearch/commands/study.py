"""`python cli.py study ...`: launch, watch and report convergence-rate studies."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import click

from airsearch.config import ConfigError, parse_assignments
from airsearch.study.spec import SpecError, StudySpec, config_id
from airsearch.study.spec_file import load_spec

if TYPE_CHECKING:  # Ray loads only when a study is launched
    from airsearch.study.runner import LaunchOutcome

TRACKING_HELP = ("MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db "
                 "in the current directory)")


def _tracking(option: str | None) -> str:
    from airsearch.study.mlflow_layout import resolve_tracking_uri

    return resolve_tracking_uri(option)


def _existing_tracking(option: str | None) -> str:
    """The tracking store to read from; a local one must exist (reading never creates one)."""
    uri = _tracking(option)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        raise click.ClickException(
            f"no tracking store at {uri[len('sqlite:///'):]}: run this where the study was "
            "launched, or pass --tracking-uri (or set MLFLOW_TRACKING_URI)")
    return uri


def _mlflow_view(uri: str, experiment_id: str) -> str:
    from urllib.parse import urlsplit

    from airsearch.study.mlflow_layout import UI_ENV, curves_view_url, runs_view_url, ui_base

    views = (f"mlflow view: {runs_view_url(uri, experiment_id)}\n"
             f"curves by configuration: {curves_view_url(uri, experiment_id)}")
    if uri.startswith(("http://", "https://")):
        return views
    port = urlsplit(ui_base(uri)).port or 5000
    return (f"{views}\n(after: mlflow ui --backend-store-uri {uri} --port {port}; another "
            f"address: set {UI_ENV})")


@click.group()
def study() -> None:
    """Convergence-rate studies: many configurations x seeds on Ray Tune, logged to MLflow.

    \b
    Examples:
      python cli.py study launch studies/quickstart.yaml
      python cli.py study launch studies/search.yaml --dry-run
      python cli.py study status quickstart
      python cli.py study report quickstart --format markdown
    """


def _load(path: str, trial_run: dict[str, object] | None = None) -> StudySpec:
    try:
        return load_spec(path, trial_run)
    except SpecError as exc:
        raise click.ClickException(str(exc)) from None


@study.command()
@click.argument("spec_path", metavar="SPEC", type=click.Path(dir_okay=False))
@click.option("--address", default=None,
              help="Ray cluster to join: auto, or ray://host:10001 (default: start a local "
                   "runtime on this machine)")
@click.option("--tracking-uri", default=None, help=TRACKING_HELP)
@click.option("--max-concurrent", type=click.IntRange(min=1), default=None,
              help="most trials at once (default: the study's max_concurrent; fixed at the "
                   "first launch, a resume keeps it)")
@click.option("--num-cpus", type=click.IntRange(min=1), default=None,
              help="CPUs of the local runtime (default: all)")
@click.option("--num-gpus", type=click.IntRange(min=0), default=None,
              help="GPUs of the local runtime (default: detected)")
@click.option("--dry-run", is_flag=True, help="print the resolved plan and exit")
@click.option("--restart", is_flag=True,
              help="delete this study's results (Ray, Optuna, MLflow runs) and start over")
@click.option("--yes", is_flag=True, help="do not ask before --restart deletes results")
@click.option("--quiet", is_flag=True, help="no live progress line")
@click.option("--set", "assignments", multiple=True, metavar="KEY=VALUE",
              help="Try the study small: add a fixed config key (repeatable). With --set, "
              "--steps or --seeds the study runs as NAME-try-<hash>, apart from the full one.")
@click.option("--steps", type=click.IntRange(min=1), default=None,
              help="Try the study small: training steps per seed.")
@click.option("--seeds", type=click.IntRange(min=1), default=None,
              help="Try the study small: seeds per configuration (0..K-1).")
def launch(spec_path: str, address: str | None, tracking_uri: str | None,
           max_concurrent: int | None, num_cpus: int | None, num_gpus: int | None,
           dry_run: bool, restart: bool, yes: bool, quiet: bool,
           assignments: tuple[str, ...], steps: int | None, seeds: int | None) -> None:
    """Run the study in SPEC, or resume it if its results already exist.

    \b
    Examples:
      python cli.py study launch studies/quickstart.yaml
      python cli.py study launch studies/prior_annealing.yaml --dry-run
      python cli.py study launch studies/search.yaml --address auto
      python cli.py study launch studies/quickstart.yaml --restart --yes
      python cli.py study launch studies/output_init.yaml --steps 500 --seeds 2   # try it small
    """
    try:
        sets = parse_assignments(assignments)
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="--set") from None
    trial_run = {k: v for k, v in (("set", sets), ("steps", steps), ("seeds", seeds)) if v}
    spec = _load(spec_path, trial_run or None)
    if trial_run:
        click.echo(f"trying {spec_path} small as study {spec.name} (storage {spec.storage})")
    uri = _tracking(tracking_uri)
    # Logging a result to MLflow takes about a second; Ray Tune would warn of a bottleneck
    # each time, over the live progress line. Read when Tune is imported, so set first.
    os.environ.setdefault("TUNE_WARN_THRESHOLD_S", "30")
    from airsearch.study import preflight, runner

    if dry_run:
        click.echo(runner.plan_text(spec, uri, max_concurrent))
        return
    from airsearch.report.publish import write_report
    from airsearch.report.results import load_report
    from airsearch.report.tables import render
    from airsearch.study.mlflow_layout import run_url
    from airsearch.study.tracking import StudyTracker

    try:
        with runner.launch_lock(spec):
            outcome = _launch_locked(spec, uri, address, max_concurrent, num_cpus, num_gpus,
                                     restart, yes, quiet)
    except preflight.PreflightError as exc:
        raise click.ClickException(str(exc)) from None
    errored = f", {outcome.errored} errored (launch again to retry)" if outcome.errored else ""
    stopped = (f", {outcome.stopped} stopped early by the scheduler" if outcome.stopped
               else "")
    click.echo(f"{outcome.finished}/{outcome.trials} trials finished{stopped}{errored} "
               f"in {outcome.wall_s:.0f} s")
    report = load_report(uri, spec.name)
    click.echo(render(report, "table"))
    # The figures that compare configurations (rates with their intervals, time to count,
    # accuracy curves per configuration) go onto the study's MLflow report run at once.
    folder = Path(spec.storage) / "report"
    tracking = "" if uri == _tracking(None) else f" --tracking-uri {uri}"
    experiment_id = StudyTracker(uri, spec).experiment_id
    written = write_report(uri, report, folder)
    click.echo(f"\nreport: {folder / 'report.md'} and its figures, also on the MLflow run "
               f"{run_url(uri, experiment_id, written.run_id)}; again later: python cli.py "
               f"study report {spec.name}{tracking}")
    click.echo(_mlflow_view(uri, experiment_id))
    # A study with configurations left to train is not an answer: say so in the exit code.
    if spec.mode == "grid":
        done = {row.config_id for row in report.rows}
        missing = [json.dumps(c) for c in spec.configurations() if config_id(c) not in done]
        if missing:
            raise click.ClickException(f"{len(missing)} configuration(s) have no result yet: "
                                       + "; ".join(missing) + "; launch again to go on")
    elif outcome.errored:
        raise click.ClickException(f"{outcome.errored} trial(s) ended without a result; "
                                   "launch again to retry them")


def _launch_locked(spec: StudySpec, uri: str, address: str | None, max_concurrent: int | None,
                   num_cpus: int | None, num_gpus: int | None, restart: bool, yes: bool,
                   quiet: bool) -> LaunchOutcome:
    """Everything a launch does while it holds the study's launch lock."""
    import ray

    from airsearch.study import preflight, runner
    from airsearch.study.tracking import StudyTracker

    if not restart:
        runner.check_same_tracking(spec, uri)
    preflight.check_address(address)
    preflight.check_tracking(uri)  # last: it creates a local store not there yet
    if restart and (runner.has_results(spec) or any(Path(spec.storage).glob("[!.]*"))):
        if not yes:
            click.confirm(f"delete {spec.storage} and the MLflow runs of study "
                          f"{spec.name}?", abort=True)
        deleted = runner.restart(spec, uri)
        click.echo(f"restarting {spec.name}: results deleted ({deleted} MLflow runs)")
    else:
        recovered = (runner.set_aside_unreadable_state(spec)
                     or runner.set_aside_ended_state(spec, uri))
        if recovered:
            click.echo(recovered)
        elif runner.has_results(spec):
            click.echo(f"resuming {spec.name} from {runner.ray_path(spec)}")
    where = runner.plan_text(spec, uri, max_concurrent).splitlines()
    click.echo("\n".join(line for line in where
                          if line.startswith(("results:", "tracking:", "optuna storage:"))))
    click.echo(_mlflow_view(uri, StudyTracker(uri, spec).experiment_id))
    started, dashboard = runner.start_ray(address, num_cpus=num_cpus, num_gpus=num_gpus)
    if dashboard:
        click.echo(f"ray dashboard: {dashboard} (asks for a token: `ray get-auth-token` "
                   "prints it)")
    try:
        preflight.check_resources(spec.cpus, spec.gpus, ray.cluster_resources())
        return runner.launch(spec, uri, max_concurrent=max_concurrent, show_progress=not quiet)
    finally:
        if started:
            ray.shutdown()


@study.command()
@click.argument("name")
@click.option("--tracking-uri", default=None, help=TRACKING_HELP)
def status(name: str, tracking_uri: str | None) -> None:
    """How far study NAME has got: configurations complete, in progress, best so far.

    \b
    Example:
      python cli.py study status quickstart
    """
    import time

    from airsearch.report.results import StudyNotFound, load_progress, load_report

    uri = _existing_tracking(tracking_uri)
    try:
        report = load_report(uri, name)
        running = load_progress(uri, name)
    except StudyNotFound as exc:
        raise click.ClickException(str(exc)) from None
    best = report.best
    click.echo(f"study {name} ({report.mode}): {len(report.rows)}/{report.expected} "
               f"configurations complete, {len(running)} training or interrupted")
    for row in report.rows:
        click.echo(f"  done      {row.k}/{row.n} converged [{row.low:.2f}, {row.high:.2f}]  "
                   f"{row.name}")
    now_ms = time.time() * 1000
    for live in running:
        rate = (now_ms - live.started_ms) / 1000 / max(live.step, 1)  # seconds per step
        eta = f"ETA {rate * (live.steps - live.step) / 60:.0f} min" if live.step else "ETA -"
        click.echo(f"  training  step {live.step:,}/{live.steps:,}, {live.rate:.2f} converged so "
                   f"far [{live.low:.2f}, {live.high:.2f}], {eta}  {live.name}")
    if best is not None:
        click.echo(f"best so far: {best.k}/{best.n} converged [{best.low:.2f}, {best.high:.2f}]"
                   f"  {best.name} ({best.config_id})")
    click.echo(f"results: {report.storage}")


@study.command(name="list")
@click.option("--tracking-uri", default=None, help=TRACKING_HELP)
def list_studies(tracking_uri: str | None) -> None:
    """Studies in the tracking store, with progress and best rate.

    \b
    Example:
      python cli.py study list --tracking-uri sqlite:///mlflow.db
    """
    from mlflow.tracking import MlflowClient

    from airsearch.report.results import load_report, study_names

    uri = _existing_tracking(tracking_uri)
    names = study_names(MlflowClient(uri))
    if not names:
        click.echo("no studies yet; try: python cli.py study launch studies/quickstart.yaml")
    for name in names:
        report = load_report(uri, name)
        best = report.best
        text = f"{best.k}/{best.n} {best.name} ({best.config_id})" if best else "-"
        click.echo(f"{name:24s} {report.mode:7s} {len(report.rows):4d}/{report.expected:<4d} "
                   f"best {text}")


@study.command()
@click.argument("name")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json", "markdown"]),
              default="table", show_default=True)
@click.option("--tracking-uri", default=None, help=TRACKING_HELP)
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="folder for plots and tables (default: <study storage>/report)")
def report(name: str, fmt: str, tracking_uri: str | None, out: str | None) -> None:
    """Per configuration: k/n converged, Wilson 95% interval, outcome mix, time to converge.

    Also writes rate-vs-knob plots (and Optuna parameter importances) and logs them to the
    study's MLflow "report" run.

    \b
    Examples:
      python cli.py study report quickstart
      python cli.py study report search --format csv > search.csv
    """
    from airsearch.report.publish import write_report
    from airsearch.report.results import StudyNotFound, load_report
    from airsearch.report.tables import render

    uri = _existing_tracking(tracking_uri)
    try:
        result = load_report(uri, name)
    except StudyNotFound as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(render(result, fmt))
    folder = Path(out) if out else Path(result.storage or os.getcwd()) / "report"
    written = write_report(uri, result, folder)
    from mlflow.tracking import MlflowClient

    from airsearch.study.mlflow_layout import run_url

    experiment = MlflowClient(uri).get_experiment_by_name(name)
    click.echo(f"wrote {len(written.paths)} files to {folder}; MLflow report run: "
               f"{run_url(uri, experiment.experiment_id, written.run_id)}", err=True)
    click.echo(_mlflow_view(uri, experiment.experiment_id), err=True)
