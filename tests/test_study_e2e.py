"""Studies end to end: real local Ray, real sqlite MLflow, real (tiny) AIR training."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
import ray
import torch
import yaml
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from scipy.stats import fisher_exact

from airsearch.report.publish import write_report
from airsearch.report.results import load_report
from airsearch.report.tables import render
from airsearch.stats import wilson
from airsearch.study import runner
from airsearch.study.mlflow_layout import CONFIG_ID, KIND, SEED
from airsearch.study.spec import StudySpec, config_id
from airsearch.study.spec_file import load_spec
from airsearch.study.tracking import StudyTracker
from airsearch.training.loop import train_seeds

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
TINY = {"data.train_images": 512, "data.heldout_images": 64, "model.lstm_size": 32,
        "model.mlp_width": 32, "model.mlp_depth": 1, "model.z_what_size": 8,
        "model.glimpse_size": 10, "train.batch_size": 16}
DIVERGES = 1.0  # train.lr that sends the tiny model to nan within a few steps


def make_spec(tmp_path: Path, name: str, search: dict, seeds: int = 2, steps: int = 20,
              eval_every: int = 10, **extra: object) -> StudySpec:
    doc = {"name": name, "config": TINY, "seeds": seeds,
           "training": {"steps": steps, "eval_every": eval_every},
           "convergence": {"threshold": 0.3, "hold": 1}, "search": search,
           "storage": str(tmp_path / "runs" / name), **extra}
    path = tmp_path / f"{name}.yaml"
    path.write_text("# tiny test study (seconds)\n" + yaml.safe_dump(doc, sort_keys=False))
    return load_spec(path)


def runs(uri: str, name: str, kind: str) -> list:
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(name)
    return client.search_runs([experiment.experiment_id], f"tags.`airsearch.kind` = '{kind}'",
                              max_results=1000)


@pytest.fixture(scope="module")
def local_ray():
    """One local runtime for the in-process studies; one logical GPU for packing checks."""
    ray.init(address="local", num_cpus=2, num_gpus=1, log_to_driver=False,
             runtime_env={"env_vars": {"RAY_CHDIR_TO_TRIAL_DIR": "0"}})
    yield
    ray.shutdown()


def check_structure(uri: str, spec: StudySpec, configurations: int) -> None:
    """Parents and children are right, and the report's k/n is the children's outcomes."""
    parents = runs(uri, spec.name, "configuration")
    children = runs(uri, spec.name, "seed")
    assert len(parents) == configurations
    assert len(children) == configurations * len(spec.seeds)
    assert all(p.data.tags["airsearch.complete"] == "1" for p in parents)
    by_parent = {p.info.run_id: [] for p in parents}
    for child in children:
        by_parent[child.data.tags["mlflow.parentRunId"]].append(child)
    report = {row.config_id: row for row in load_report(uri, spec.name).rows}
    for parent in parents:
        kids = by_parent[parent.info.run_id]
        assert sorted(int(k.data.tags["airsearch.seed"]) for k in kids) == list(spec.seeds)
        outcomes = Counter(k.data.tags["airsearch.outcome"] for k in kids)
        k, n = outcomes["converged"], len(kids)
        rate = wilson(k, n)
        m = parent.data.metrics
        assert (m["converged"], m["seeds_done"]) == (k, n)
        assert m["wilson_low"] == round(rate.low, 3)  # rounded as MLflow shows them
        assert m["wilson_high"] == round(rate.high, 3)
        for outcome, count in outcomes.items():
            assert m[f"outcome/{outcome}"] == count
        row = report[parent.data.tags["airsearch.config_id"]]
        assert (row.k, row.n, row.low, row.high) == (k, n, rate.low, rate.high)
        assert set(parent.data.params) >= set(spec.varied)
        for kid in kids:  # readable names; a seed run carries its configuration and seed
            assert kid.info.run_name == f"{parent.info.run_name} / seed {kid.data.params['seed']}"
            assert kid.data.params["seed"] == kid.data.tags["airsearch.seed"]
            assert {k: kid.data.params[k] for k in spec.varied} == \
                {k: parent.data.params[k] for k in spec.varied}
            assert kid.info.status in ("FINISHED", "FAILED")
        assert parent.info.status in ("FINISHED", "FAILED")
    client = MlflowClient(uri)
    for child in children:  # every evaluation once, up to the end or to the seed's verdict
        steps = sorted(m.step for m in client.get_metric_history(child.info.run_id,
                                                                 "eval/count_accuracy"))
        assert steps == list(range(spec.eval_every, steps[-1] + 1, spec.eval_every))
        if child.data.tags["airsearch.outcome"] not in ("diverged", "converged"):
            assert steps[-1] == spec.steps  # undecided: trained to the end


def test_grid_study_with_a_diverging_configuration(tmp_path: Path, local_ray: None,
                                                   capfd: pytest.CaptureFixture[str]) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = make_spec(tmp_path, "grid", {"mode": "grid", "space": {
        "init.decoder_bias": [-2.0, 0.0], "train.lr": [1e-3, DIVERGES]}}, max_concurrent=2)
    outcome = runner.launch(spec, uri, show_progress=True)
    assert (outcome.trials, outcome.finished, outcome.errored) == (4, 4, 0)
    # stderr is no terminal here (as under nohup): one progress line as each trial ends.
    logged = capfd.readouterr().err
    assert logged.count("[grid] trials ") >= 4 and "[grid] trials 4/4 done" in logged, logged
    check_structure(uri, spec, 4)
    report = load_report(uri, spec.name)
    diverged = [r for r in report.rows if r.values["train.lr"] == DIVERGES]
    assert [r.outcomes for r in diverged] == [{"diverged": 2}] * 2
    assert [r.objective for r in diverged] == [0.0, 0.0]  # their rate alone
    seeds = runs(uri, spec.name, "seed")
    client = MlflowClient(uri)
    figures = [a.path for s in seeds if s.data.tags["airsearch.outcome"] != "diverged"
               for a in client.list_artifacts(s.info.run_id)]
    assert figures.count("reconstruction.png") == 4
    assert figures.count("attention.png") == 4
    assert figures.count("confusion.png") == 4
    experiment = client.get_experiment_by_name(spec.name)
    assert experiment.artifact_location == (tmp_path / "mlruns").as_uri()  # next to the DB
    table = json.loads(render(report, "json"))
    assert table["best"] == report.rows[0].config_id
    # Every configuration is tested against the first grid point (lr 1e-3, decoder bias -2).
    assert report.reference == spec.reference_id == config_id(spec.configurations()[0])
    ref = report.reference_row
    for row in report.rows:
        if row is ref:
            assert row.vs_reference is None
            continue
        expected = fisher_exact([[row.k, row.n - row.k], [ref.k, ref.n - ref.k]]).pvalue
        assert row.vs_reference.p_value == pytest.approx(expected)
        assert row.vs_reference.low <= row.rate - ref.rate <= row.vs_reference.high
    assert table["reference"] == ref.config_id and table["verdict"] == report.verdict()
    csv_rows = list(csv.DictReader(io.StringIO(render(report, "csv"))))
    assert {float(r["wilson_low"]) for r in csv_rows} == {r.low for r in report.rows}
    assert [r["fisher_p"] for r in csv_rows if r["is_reference"] == "1"] == [""]
    written = {p.name for p in write_report(uri, report, tmp_path / "report").paths}
    assert written >= {
        "rate_vs_init.decoder_bias.png", "rate_vs_train.lr.png", "report.md",
        "rate_by_configuration.png", "seeds_eval_count_accuracy.png",
        "confusion_by_configuration.png", "rate_by_configuration.pdf"}
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "![rate_by_configuration](rate_by_configuration.png)" in markdown
    for row in report.rows:  # summed over seeds: every held-out image of every seed, once
        assert sum(map(sum, row.confusion)) == row.n * 64
    write_report(uri, report, tmp_path / "report")  # taken twice: the same one report run
    reports = runs(uri, spec.name, "report")
    assert len(reports) == 1 and reports[0].info.status == "FINISHED"
    assert len(client.get_metric_history(reports[0].info.run_id, "configurations_complete")) == 1
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # runs view
    again = runner.launch(spec, uri, show_progress=False)  # existing results: resume, no rerun
    assert again.resumed and again.newly_logged == 0
    check_structure(uri, spec, 4)


def test_optuna_study(tmp_path: Path, local_ray: None) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = make_spec(tmp_path, "search", {
        "mode": "optuna", "sampler": "random", "seed": 3, "budget": 3,
        "points_to_evaluate": [{"init.where_loc": "prior", "train.lr": 1e-3}],
        "space": {"init.where_loc": ["prior", "zero"],
                  "train.lr": {"low": 1e-4, "high": 1e-2, "log": True}}}, max_concurrent=2)
    outcome = runner.launch(spec, uri, show_progress=False)
    assert (outcome.trials, outcome.finished) == (3, 3)
    parents = runs(uri, spec.name, "configuration")
    check_structure(uri, spec, len(parents))
    tried = [json.loads(p.data.tags["airsearch.overrides"]) for p in parents]
    assert {"init.where_loc": "prior", "train.lr": 1e-3} in tried
    study = optuna.load_study(study_name="search",
                              storage=f"sqlite:///{Path(spec.storage) / 'optuna.db'}")
    values = sorted(t.value for t in study.trials if t.state.name == "COMPLETE")
    assert len(values) == 3
    assert values == pytest.approx(sorted(p.data.metrics["objective"] for p in parents))
    assert study.metric_names == ["convergence rate + 0.001 x mean eval/count_accuracy "
                                  "(tie-break)"]
    by_config = {p.data.tags["airsearch.config_id"]: p for p in parents}
    for trial in study.trials:  # each Optuna trial says which configuration and what it got
        parent = by_config[trial.user_attrs["config_id"]]
        assert trial.user_attrs["mlflow_run_id"] == parent.info.run_id
        assert trial.user_attrs["name"] == parent.info.run_name
        assert trial.user_attrs["converged"] == parent.data.metrics["converged"]
        assert trial.user_attrs["seeds_done"] == 2
        assert trial.user_attrs["wilson_low"] <= trial.user_attrs["convergence_rate"] <= \
            trial.user_attrs["wilson_high"]
        assert set(trial.intermediate_values) == {10, 20}  # keyed by training step


def test_fractional_gpus_pack_four_trials(tmp_path: Path, local_ray: None) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = make_spec(tmp_path, "packing", {"mode": "grid", "space": {
        "init.decoder_bias": [-3.0, -2.0, -1.0, 0.0]}}, seeds=1,
        resources={"cpus": 0.5, "gpus": 0.25}, max_concurrent=4)
    outcome = runner.launch(spec, uri, show_progress=False)
    assert outcome.finished == 4
    results = outcome.results
    # One GPU in the runtime, and every trial held a quarter of it: four share GPU 0.
    assert all(json.loads(m["gpu_ids"]) == ["0"] for m in results)


@pytest.mark.parametrize("garble", ["tuner.pkl", "experiment_state"])
def test_unreadable_ray_state_is_set_aside_and_the_study_record_decides(
        tmp_path: Path, local_ray: None, garble: str) -> None:
    """A kill mid-write leaves Ray's state truncated: the configurations the study has not
    recorded as complete train again, the others do not, and nothing is left RUNNING."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = make_spec(tmp_path, "state", {"mode": "grid", "space": {
        "init.decoder_bias": [-2.0, 0.0]}}, seeds=1, max_concurrent=2)
    assert runner.launch(spec, uri, show_progress=False).finished == 2
    # As if the second configuration had never reported before the kill.
    lost = runs(uri, spec.name, "configuration")[0]
    for run in [lost] + [c for c in runs(uri, spec.name, "seed")
                         if c.data.tags["mlflow.parentRunId"] == lost.info.run_id]:
        MlflowClient(uri).delete_run(run.info.run_id)
    folder = runner.ray_path(spec)
    state = (folder / "tuner.pkl" if garble == "tuner.pkl"
             else max(folder.glob("experiment_state-*.json")))
    state.write_bytes(state.read_bytes()[: len(state.read_bytes()) // 2])
    said = runner.set_aside_unreadable_state(spec)
    assert said is not None and f"{state} is unreadable" in said
    again = runner.launch(spec, uri, show_progress=False)
    assert (again.trials, again.finished) == (1, 1)
    assert again.results[0]["config_id"] == lost.data.tags["airsearch.config_id"]
    check_structure(uri, spec, 2)
    assert all(r.info.status == "FINISHED" for r in runs(uri, spec.name, "configuration"))
    assert runner.set_aside_unreadable_state(spec) is None  # the new state is sound


def test_two_node_cluster(tmp_path: Path) -> None:
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        spec = make_spec(tmp_path, "cluster", {"mode": "grid", "space": {
            "init.decoder_bias": [-2.0, 0.0]}}, seeds=1, max_concurrent=2)
        outcome = runner.launch(spec, uri, show_progress=False)
        assert outcome.finished == 2
        nodes = {m["node_id"] for m in outcome.results}
        assert len(nodes) == 2
        check_structure(uri, spec, 2)
        # Where each configuration trained is on its parent run, not only in Ray's results.
        placed = {p.data.tags["airsearch.node_id"]: p.data.tags
                  for p in runs(uri, spec.name, "configuration")}
        assert set(placed) == nodes
        assert all(tags["airsearch.node_ip"] and tags["airsearch.hostname"]
                   for tags in placed.values())
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_a_lost_node_s_trial_is_retried_on_the_nodes_left(tmp_path: Path) -> None:
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    worker = cluster.add_node(num_cpus=1)
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        spec = make_spec(tmp_path, "lost", {"mode": "grid", "space": {
            "init.decoder_bias": [-2.0, 0.0]}}, seeds=1, steps=400, eval_every=20,
            max_concurrent=2)
        trials = Path(spec.storage) / "trials"

        def remove_worker_once_both_train() -> None:
            deadline = time.time() + 300
            while time.time() < deadline and len(list(trials.glob("*/metrics.jsonl"))) < 2:
                time.sleep(0.5)
            cluster.remove_node(worker)

        killer = threading.Thread(target=remove_worker_once_both_train, daemon=True)
        killer.start()
        outcome = runner.launch(spec, uri, show_progress=False)
        killer.join()
        assert (outcome.trials, outcome.finished, outcome.errored) == (2, 2, 0)
        check_structure(uri, spec, 2)
        assert {m["node_id"] for m in outcome.results} == {cluster.head_node.node_id}
        assert all(r.info.status == "FINISHED" for r in runs(uri, spec.name, "configuration"))
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_killed_driver_resumes_without_losing_or_double_counting(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = make_spec(tmp_path, "resume", {"mode": "grid", "space": {
        "init.decoder_bias": [-3.0, -2.0, -1.0, 0.0, 1.0]}}, seeds=2, steps=40,
        max_concurrent=1)
    command = [sys.executable, str(ROOT / "cli.py"), "study", "launch", spec.path,
               "--tracking-uri", uri, "--num-cpus", "1", "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    driver = subprocess.Popen(command, cwd=tmp_path, env=env, start_new_session=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 600
    done = 0
    while time.time() < deadline and driver.poll() is None:
        time.sleep(1)
        # Ray's folder appears only after the driver created the MLflow DB: no migration race.
        if runner.ray_path(spec).exists():
            done = sum(p.data.tags.get("airsearch.complete") == "1"
                       for p in runs(uri, "resume", "configuration"))
            if done >= 2:
                break
    assert driver.poll() is None and done >= 2, driver.stdout.read().decode()[-3000:]
    # The driver and the Ray runtime it started die together, as on a crashed machine.
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    assert runner.has_results(spec)
    second = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=900)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "resuming resume" in second.stdout
    assert "ray dashboard: http://" in second.stdout  # ray[default]: the dashboard runs
    assert "`ray get-auth-token` prints it" in second.stdout
    # The launch ends with what to do next: the report command and the MLflow view, with the
    # port the UI is told to use and the training (not GenAI) layout.
    assert "again later: python cli.py study report resume" in second.stdout
    assert "--port 5000; another address: set AIRSEARCH_MLFLOW_UI" in second.stdout
    assert second.stdout.count("workflowType=machine_learning") >= 3  # view, report run
    check_structure(uri, spec, 5)
    trials = ray.tune.ExperimentAnalysis(str(runner.ray_path(spec))).trials
    finished = [t.last_result["config_id"] for t in trials if t.last_result.get("finished")]
    assert sorted(finished) == sorted(
        p.data.tags["airsearch.config_id"] for p in runs(uri, "resume", "configuration"))


def test_runs_left_without_params_by_a_kill_get_them_on_resume(tmp_path: Path) -> None:
    """A driver killed between creating a run and logging its params (seen in CI) leaves runs
    with tags only; the resumed launch's tracker completes their params."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = make_spec(tmp_path, "bare", {"mode": "grid", "space": {
        "init.decoder_bias": [-2.0]}})
    overrides = {"init.decoder_bias": -2.0}
    cid = config_id(overrides)
    killed = StudyTracker(uri, spec)
    parent = killed.client.create_run(killed.experiment_id, run_name="bare",
                                      tags={KIND: "configuration", CONFIG_ID: cid})
    killed.client.create_run(killed.experiment_id, run_name="bare / seed 0",
                             tags={MLFLOW_PARENT_RUN_ID: parent.info.run_id, KIND: "seed",
                                   CONFIG_ID: cid, SEED: "0"})
    resumed = StudyTracker(uri, spec)
    parent = resumed.parent(cid, overrides, "trial")
    seed_runs = resumed.seed_runs(cid, parent, overrides)
    assert sorted(seed_runs) == list(spec.seeds)
    flat = spec.config_for(overrides).to_flat()
    assert parent.data.params == {k: str(v) for k, v in flat.items()}
    for seed, seed_run in seed_runs.items():
        params = resumed.client.get_run(seed_run.run_id).data.params
        assert params == {**{k: str(v) for k, v in flat.items()}, "seed": str(seed)}
    assert len(runs(uri, "bare", "seed")) == len(spec.seeds)  # found, not created twice


def test_configuration_killed_midway_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    """Launched again after a kill, a configuration goes on from its last checkpoint and ends
    exactly as if it had trained without interruption."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = make_spec(tmp_path, "midway", {"mode": "grid", "space": {
        "init.decoder_bias": [-2.0]}}, seeds=1, steps=1500, eval_every=50)
    command = [sys.executable, str(ROOT / "cli.py"), "study", "launch", spec.path,
               "--tracking-uri", uri, "--num-cpus", "1", "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    driver = subprocess.Popen(command, cwd=tmp_path, env=env, start_new_session=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    trials = Path(spec.storage) / "trials"
    deadline, reached = time.time() + 600, 0
    while time.time() < deadline and driver.poll() is None and reached < 300:
        time.sleep(0.5)
        for metrics in trials.glob("*/metrics.jsonl"):
            rows = [json.loads(line) for line in metrics.read_text().splitlines()]
            reached = max([reached] + [row["step"] for row in rows])
    assert driver.poll() is None and 300 <= reached < 1500, driver.stdout.read().decode()[-3000:]
    # The seed's run is live: it exists, running, with the evaluations so far (the driver
    # logs them as the trial reports them: wait for them, bounded, rather than for a while).
    client = MlflowClient(uri)
    seen, live = 0, None
    while time.time() < deadline and seen < 300 // 50 - 1:
        found = runs(uri, spec.name, "seed")
        if found:
            (live,) = found
            seen = len(client.get_metric_history(live.info.run_id, "eval/count_accuracy"))
        time.sleep(0.5)
    assert live is not None and live.info.status == "RUNNING" and seen >= 300 // 50 - 1
    assert live.data.tags["airsearch.outcome"] == "running"
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()

    second = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=900)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    check_structure(uri, spec, 1)  # the same seed run went on: one run, no step twice
    assert [r.info.run_id for r in runs(uri, spec.name, "seed")] == [live.info.run_id]
    finished = [t.last_result for t in
                ray.tune.ExperimentAnalysis(str(runner.ray_path(spec))).trials
                if t.last_result.get("finished")]
    assert len(finished) == 1
    result = finished[0]
    assert result["error"] == "" and result["resumed_from_step"] >= 300
    parent = runs(uri, "midway", "configuration")[0]
    assert int(parent.data.tags["airsearch.resumed_from_step"]) == result["resumed_from_step"]
    assert not list(trials.glob("*/checkpoint.pt"))  # reported, so no longer kept

    # The same configuration trained without interruption, on the trial's thread count.
    threads = torch.get_num_threads()
    torch.set_num_threads(int(spec.cpus))
    try:
        alone = train_seeds(spec.config_for({"init.decoder_bias": -2.0}), spec.seeds,
                            progress=False)
    finally:
        torch.set_num_threads(threads)
    (resumed,) = json.loads(result["seeds_json"])
    assert resumed["outcome"] == alone.seeds[0].outcome

    def without_wall_time(history: list[dict]) -> str:  # JSON: a NaN metric equals itself
        return json.dumps([{k: float(v) for k, v in row.items() if k != "wall_s"}
                           for row in history], sort_keys=True)

    assert without_wall_time(resumed["history"]) == without_wall_time(alone.seeds[0].history)


def test_asha_stops_a_configuration_clearly_behind(tmp_path: Path, local_ray: None,
                                                    capfd: pytest.CaptureFixture[str]) -> None:
    """Steps always off (reads 0: a third of the images right) against steps always on
    (reads 3: none right): at the first rung the second is below the first and stops; its
    seeds are still counted, labelled at their last evaluation, and nothing is retrained."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = make_spec(tmp_path, "pruned", {"mode": "grid", "configurations": [
        {"init.presence_bias": -20.0}, {"init.presence_bias": 20.0}]}, steps=40,
        scheduler={"kind": "asha", "grace": 0.25, "reduction_factor": 2}, max_concurrent=1)
    assert "early stopping: ASHA at step 10 and every x2" in runner.plan_text(spec, uri, None)
    outcome = runner.launch(spec, uri, show_progress=False)
    assert (outcome.trials, outcome.finished, outcome.stopped, outcome.errored) == (2, 1, 1, 0)
    assert "[pruned] stopped early at step 10: presence_bias=20.0" in capfd.readouterr().out
    parents = {p.data.params["init.presence_bias"]: p for p in runs(uri, spec.name,
                                                                     "configuration")}
    stopped = parents["20.0"]
    assert stopped.data.tags["airsearch.stopped_early_at_step"] == "10"
    assert stopped.data.tags["airsearch.complete"] == "1"
    assert stopped.data.metrics["seeds_done"] == 2  # every seed counted
    assert "airsearch.stopped_early_at_step" not in parents["-20.0"].data.tags
    kids = [r for r in runs(uri, spec.name, "seed")
            if r.data.tags["mlflow.parentRunId"] == stopped.info.run_id]
    assert sorted(k.data.tags["airsearch.outcome"] for k in kids) == ["collapsed_to_max"] * 2
    row = next(r for r in load_report(uri, spec.name).rows if r.stopped_early_at is not None)
    assert (row.k, row.n, row.stopped_early_at) == (0, 2, 10)
    assert "stopped early at step 10" in render(load_report(uri, spec.name), "table")
    assert not list((Path(spec.storage) / "trials").glob("*/checkpoint.pt"))
    trials = ray.tune.ExperimentAnalysis(str(runner.ray_path(spec))).trials
    assert sorted(str(t) for t in trials) == ["presence_bias=-20.0", "presence_bias=20.0"]
    again = runner.launch(spec, uri, show_progress=False)
    assert again.newly_logged == 0  # nothing trained again, nothing logged twice
