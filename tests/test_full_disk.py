"""A failure is never a result: a study whose folder sits on a full filesystem (a real tmpfs)
exits non-zero naming the full disk, records nothing as complete, and trains the
configuration once space is there."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
# Small and fast, but a checkpoint of ~18 MB (wide 2,500-pixel input layers): more than the
# 8 MB filesystem holds, while Ray's own state and the metrics fit.
WIDE = {"data.train_images": 256, "data.heldout_images": 64, "model.lstm_size": 32,
        "model.mlp_depth": 1, "model.z_what_size": 8, "model.glimpse_size": 10,
        "train.batch_size": 8}


def mount_tmpfs(where: Path, size: str) -> None:
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()[:100]})")


def launch(spec: Path, uri: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), "study", "launch", str(spec),
                           "--tracking-uri", uri, "--num-cpus", "1", "--quiet"], cwd=cwd,
                          capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_a_full_disk_is_named_and_the_configuration_trains_once_there_is_space(tmp_path):
    disk = tmp_path / "disk"
    mount_tmpfs(disk, "8m")
    try:
        doc = {"name": "full", "config": WIDE, "seeds": 1,
               "training": {"steps": 10, "eval_every": 5},
               "search": {"mode": "grid", "space": {"init.decoder_bias": [-2.0]}},
               "storage": str(disk / "runs" / "full")}
        spec = tmp_path / "full.yaml"
        spec.write_text("# full-disk test study\n" + yaml.safe_dump(doc))
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"

        first = launch(spec, uri, tmp_path)
        assert first.returncode == 1, first.stdout[-2000:] + first.stderr[-2000:]
        assert f"disk full in {disk / 'runs' / 'full'}" in first.stdout + first.stderr
        assert "configuration(s) have no result yet" in first.stderr
        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name("full")
        (parent,) = client.search_runs([experiment.experiment_id],
                                       "tags.`airsearch.kind` = 'configuration'")
        assert parent.data.tags["airsearch.complete"] == "0"
        assert parent.info.status == "FAILED"

        subprocess.run(["mount", "-o", "remount,size=256m", str(disk)], check=True)
        second = launch(spec, uri, tmp_path)
        assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-2000:]
        assert "ended without a result" in second.stdout  # Ray's ended state set aside
        (parent,) = client.search_runs([experiment.experiment_id],
                                       "tags.`airsearch.kind` = 'configuration'")
        assert parent.data.tags["airsearch.complete"] == "1"
        assert parent.data.metrics["seeds_done"] == 1.0
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
