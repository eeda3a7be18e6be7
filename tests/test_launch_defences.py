"""A launch refuses what cannot work, in one line, before any work: a server that is not
MLflow, a half-created MLflow store (a real full tmpfs), a second launch of a running study, a
resumed study pointed at another store; and it says what it set aside (a damaged checkpoint,
Ray state of the wrong kind) in its own output and on the MLflow run."""

from __future__ import annotations

import http.server
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import ray.cloudpickle
import yaml
from mlflow.tracking import MlflowClient

from airsearch.study import runner
from airsearch.study.spec import config_id
from airsearch.study.spec_file import load_spec

ROOT = Path(__file__).resolve().parents[1]
TINY = {"data.train_images": 256, "data.heldout_images": 64, "model.lstm_size": 32,
        "model.mlp_width": 32, "model.mlp_depth": 1, "model.z_what_size": 8,
        "model.glimpse_size": 10, "estimator.baseline_width": 32, "train.batch_size": 16}
pytestmark = pytest.mark.filterwarnings("ignore:full MNIST not found")


def study_file(tmp_path: Path, steps: int = 20, name: str = "guard") -> Path:
    doc = {"name": name, "config": TINY, "seeds": 1,
           "training": {"steps": steps, "eval_every": 10},
           "search": {"mode": "grid", "space": {"init.decoder_bias": [-2.0]}},
           "storage": str(tmp_path / "runs" / name)}
    path = tmp_path / f"{name}.yaml"
    path.write_text("# launch-defence test study\n" + yaml.safe_dump(doc, sort_keys=False))
    return path


def launch_command(spec: Path, uri: str) -> list[str]:
    return [sys.executable, str(ROOT / "cli.py"), "study", "launch", str(spec),
            "--tracking-uri", uri, "--num-cpus", "1", "--quiet"]


def launch(tmp_path: Path, spec: Path, uri: str) -> subprocess.CompletedProcess:
    return subprocess.run(launch_command(spec, uri), cwd=tmp_path, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)})


def last_line(done: subprocess.CompletedProcess) -> str:
    return done.stderr.strip().splitlines()[-1]


def test_a_server_that_is_not_mlflow_is_refused_before_ray_starts(tmp_path: Path) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        uri = f"http://127.0.0.1:{server.server_address[1]}"
        done = launch(tmp_path, study_file(tmp_path), uri)
    finally:
        server.shutdown()
    assert done.returncode == 1
    assert f"--tracking-uri {uri}: answers HTTP but is not an MLflow tracking server" in \
        last_line(done)
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "runs" / "guard" / "ray").exists()


def test_a_half_created_mlflow_store_names_the_file_and_the_way_out(tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=120k", "tmpfs", str(disk)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()[:100]})")
    try:
        store = disk / "mlflow.db"
        uri = f"sqlite:///{store}"
        spec = study_file(tmp_path)
        full = launch(tmp_path, spec, uri)  # the schema does not fit: the store is half made
        assert full.returncode == 1
        assert f"the MLflow store {store} cannot be created" in last_line(full)
        assert store.exists()
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        again = launch(tmp_path, spec, uri)  # room now, but the half-made store stays broken
        assert again.returncode == 1
        line = last_line(again)
        assert f"the MLflow store {store} cannot be opened" in line
        assert f"mv {store} {store}.broken" in line
        assert "Traceback" not in again.stderr
        assert not (tmp_path / "runs" / "guard" / "ray").exists()
    finally:
        subprocess.run(["umount", str(disk)], check=False)


@pytest.mark.slow
def test_a_second_launch_of_a_running_study_is_refused_and_a_killed_one_holds_nothing(
        tmp_path: Path) -> None:
    spec_path = study_file(tmp_path, steps=100_000)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = subprocess.Popen(launch_command(spec_path, uri), cwd=tmp_path,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env={**os.environ, "PYTHONPATH": str(ROOT)},
                             start_new_session=True)
    try:
        trials = tmp_path / "runs" / "guard" / "trials"
        deadline = time.time() + 300
        while not list(trials.glob("*/metrics.jsonl")):  # the first launch is training
            assert first.poll() is None, "the first launch ended"
            assert time.time() < deadline, "the first launch did not start training"
            time.sleep(0.5)
        second = launch(tmp_path, spec_path, uri)
        assert second.returncode == 1
        assert (f"study guard is being launched already (process {first.pid} on "
                in last_line(second))
        assert "Traceback" not in second.stderr
        while True:  # `study status` shows the running configuration's progress by name
            status = subprocess.run([sys.executable, str(ROOT / "cli.py"), "study", "status",
                                     "guard", "--tracking-uri", uri], cwd=tmp_path,
                                    capture_output=True, text=True, timeout=120, check=True)
            if "training  step" in status.stdout or time.time() > deadline:
                break
            time.sleep(1)
        assert "/100,000, 0.00 converged so far [0.00, 0.79], ETA" in status.stdout
        assert status.stdout.rstrip().splitlines()[1].endswith("decoder_bias=-2.0")
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=60)
    with runner.launch_lock(load_spec(spec_path)):  # the kill left no lock behind
        pass


@pytest.mark.slow
def test_what_a_launch_sets_aside_it_says_and_a_resumed_study_keeps_its_store(
        tmp_path: Path) -> None:
    spec_path = study_file(tmp_path)
    spec = load_spec(spec_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cid = config_id({"init.decoder_bias": -2.0})
    folder = Path(spec.storage) / "trials" / cid
    folder.mkdir(parents=True)
    (folder / "checkpoint.pt").write_bytes(b"not a checkpoint" * 100)

    first = launch(tmp_path, spec_path, uri)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    assert f"[guard] configuration {cid}: " in first.stdout
    assert "set aside as" in first.stdout
    client = MlflowClient(uri)
    (parent,) = client.search_runs([client.get_experiment_by_name("guard").experiment_id],
                                   "tags.`airsearch.kind` = 'configuration'")
    assert parent.info.run_name == "decoder_bias=-2.0"  # what it varies, in short
    assert "set aside as" in parent.data.tags["airsearch.set_aside"]
    assert parent.data.tags["airsearch.complete"] == "1"
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True, check=True).stdout.strip()
    seed_runs = client.search_runs([parent.info.experiment_id], "tags.`airsearch.kind` = 'seed'")
    for run in [parent, *seed_runs]:  # which code and which command made every run
        assert run.data.tags["mlflow.source.git.commit"] == head
        assert run.data.tags["airsearch.command"].startswith(
            f"python cli.py study launch {spec_path} --tracking-uri {uri}")

    other = f"sqlite:///{tmp_path / 'other.db'}"
    moved = launch(tmp_path, spec_path, other)
    assert moved.returncode == 1
    assert (f"study guard logs to {uri}" in last_line(moved)
            and f"this launch names {other}" in last_line(moved))
    assert not (tmp_path / "other.db").exists()

    tuner = Path(spec.storage) / "ray" / "tuner.pkl"
    tuner.write_bytes(ray.cloudpickle.dumps([1, 2, 3]))
    resumed = launch(tmp_path, spec_path, uri)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert f"{tuner} is unreadable (ValueError: holds a list, not Ray Tune's tuner state)" in \
        resumed.stdout
    assert "set aside as" in resumed.stdout
