"""A launch that cannot work fails with one line, before any work starts."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from airsearch.study import preflight

ROOT = Path(__file__).resolve().parents[1]
TINY = {"data.train_images": 512, "data.heldout_images": 64, "model.lstm_size": 32,
        "model.mlp_width": 32, "model.mlp_depth": 1, "model.z_what_size": 8,
        "model.glimpse_size": 10, "train.batch_size": 16}


def study_file(tmp_path: Path, **extra: object) -> Path:
    doc = {"name": "pre", "config": TINY, "seeds": 1, "training": {"steps": 20, "eval_every": 10},
           "search": {"mode": "grid", "space": {"init.decoder_bias": [-2.0]}},
           "storage": str(tmp_path / "runs" / "pre"), **extra}
    path = tmp_path / "pre.yaml"
    path.write_text("# preflight test study\n" + yaml.safe_dump(doc, sort_keys=False))
    return path


def launch(tmp_path: Path, *args: str, env: dict[str, str] | None = None,
           timeout: float = 120) -> subprocess.CompletedProcess:
    """The launch, bounded by `timeout` (a hang fails the test); whether it stopped before
    any work is read off what it left, never off the clock."""
    command = [sys.executable, str(ROOT / "cli.py"), "study", "launch", *args, "--quiet"]
    return subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_dead_tracking_server_fails_before_ray_starts(tmp_path: Path) -> None:
    spec = study_file(tmp_path)
    done = launch(tmp_path, str(spec), "--tracking-uri",
                           f"http://127.0.0.1:{free_port()}")
    assert done.returncode == 1
    assert "no tracking server answers" in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.splitlines()) == 1
    assert not (tmp_path / "runs" / "pre" / "ray").exists()


@pytest.mark.parametrize("address", ["127.0.0.1:{port}", "ray://127.0.0.1:{port}"])
def test_nothing_at_the_address_fails_before_ray_starts(tmp_path: Path, address: str) -> None:
    spec = study_file(tmp_path)
    done = launch(tmp_path, str(spec), "--address", address.format(port=free_port()),
                           "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert done.returncode == 1
    assert "no Ray cluster answers there" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "mlflow.db").exists()


def test_garbled_optuna_state_names_the_file_and_the_way_out(tmp_path: Path) -> None:
    spec = study_file(tmp_path, search={"mode": "optuna", "budget": 2, "space": {
        "init.decoder_bias": {"low": -3.0, "high": 0.0}}})
    ray_dir = tmp_path / "runs" / "pre" / "ray"
    ray_dir.mkdir(parents=True)
    (ray_dir / "tuner.pkl").write_bytes(b"\x80\x05garbled")
    done = launch(tmp_path, str(spec), "--tracking-uri",
                           f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert done.returncode == 1
    assert f"{ray_dir / 'tuner.pkl'} is unreadable" in done.stderr
    assert "--restart" in done.stderr and "Traceback" not in done.stderr


def test_resources_no_node_has() -> None:
    preflight.check_resources(1, 0.25, {"CPU": 2.0, "GPU": 1.0})
    with pytest.raises(preflight.PreflightError, match=r"1 gpu \(the cluster has 0\)"):
        preflight.check_resources(1, 1, {"CPU": 2.0})
    with pytest.raises(preflight.PreflightError, match=r"4 cpus \(the cluster has 2\)"):
        preflight.check_resources(4, 0, {"CPU": 2.0})


@pytest.mark.slow
def test_a_gpu_request_on_a_machine_without_one_fails_instead_of_waiting(tmp_path: Path) -> None:
    spec = study_file(tmp_path, resources={"cpus": 1, "gpus": 1})
    done = launch(tmp_path, str(spec), "--num-gpus", "0", "--tracking-uri",
                           f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert done.returncode == 1
    assert "resources: each trial asks for 1 gpu (the cluster has 0)" in done.stderr
    assert not list((tmp_path / "runs" / "pre").glob("trials/*"))


@pytest.mark.slow
def test_a_token_cluster_joined_without_token_mode_says_how_to_fix_it(tmp_path: Path) -> None:
    """`ray start --head` turns token authentication on; a driver without RAY_AUTH_MODE fails."""
    temp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # short: Ray's socket paths
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}
    # --block keeps the head's processes in this test's own process group, so the test ends
    # exactly what it started (not `ray stop`, which would stop every runtime on the machine).
    head = subprocess.Popen(["ray", "start", "--head", "--block", f"--port={port}",
                             "--num-cpus=1", "--include-dashboard=false", f"--temp-dir={temp}"],
                            env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_for_raylet(temp, head)
        spec = study_file(tmp_path)
        done = launch(tmp_path, str(spec), "--address", f"127.0.0.1:{port}",
                         "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
                         env={"RAY_AUTH_MODE": "disabled"}, timeout=180)
        assert done.returncode == 1
        last = done.stderr.strip().splitlines()[-1]
        assert "uses token authentication: set RAY_AUTH_MODE=token" in last
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)


def wait_for_raylet(temp: Path, head: subprocess.Popen) -> None:
    """Until the head's raylet socket exists (the node accepts drivers), or the head died."""
    deadline = time.time() + 120
    while not list(temp.glob("session_*/sockets/raylet")):
        assert head.poll() is None, "ray start --head exited"
        assert time.time() < deadline, "the Ray head did not come up in 120 s"
        time.sleep(0.5)
