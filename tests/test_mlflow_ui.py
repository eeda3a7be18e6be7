"""What a researcher sees: a real MLflow UI, driven by headless Chromium, opens a finished
study's saved view in the runs table with every configuration and its convergence rate."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import ray
import yaml
from mlflow.tracking import MlflowClient

from airsearch.report.publish import write_report
from airsearch.report.results import load_report
from airsearch.study import runner
from airsearch.study.mlflow_layout import (
    UI_ENV,
    curves_view_url,
    run_name,
    run_url,
    runs_view_url,
)
from airsearch.study.spec_file import load_spec

pytestmark = pytest.mark.slow
BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")
TINY = {"data.train_images": 512, "data.heldout_images": 64, "model.lstm_size": 32,
        "model.mlp_width": 32, "model.mlp_depth": 1, "model.z_what_size": 8,
        "model.glimpse_size": 10, "train.batch_size": 16}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def dom(url: str, *ready: str, attempts: int = 3) -> str:
    """The page as Chromium renders it after its scripts have run.

    On a loaded machine the server's answers can come after Chromium's budget for the page's
    scripts, and the dump holds a half-drawn page; it is taken again (up to `attempts` times)
    until every `ready` text is there. The assertions then read the last dump as it is.
    """
    page = ""
    for _ in range(attempts):
        page = subprocess.run([BROWSER, "--headless", "--no-sandbox", "--disable-gpu",
                               "--window-size=1600,1000", "--virtual-time-budget=30000",
                               "--dump-dom", url], capture_output=True, text=True,
                              timeout=120).stdout
        if all(text in page for text in ready):
            break
    return page


@pytest.mark.skipif(BROWSER is None, reason="no Chromium here (Debian: apt-get install chromium)")
def test_the_runs_view_lists_configurations_with_their_rates(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    doc = {"name": "ui", "config": TINY, "seeds": 1, "training": {"steps": 20, "eval_every": 10},
           "convergence": {"threshold": 0.3, "hold": 1},
           "search": {"mode": "grid", "space": {"init.decoder_bias": [-2.0, 0.0]}},
           "storage": str(tmp_path / "runs" / "ui"), "max_concurrent": 2}
    (tmp_path / "ui.yaml").write_text("# browser test study\n" + yaml.safe_dump(doc))
    spec = load_spec(tmp_path / "ui.yaml")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ray.init(address="local", num_cpus=2, log_to_driver=False,
             runtime_env={"env_vars": {"RAY_CHDIR_TO_TRIAL_DIR": "0"}})
    try:
        assert runner.launch(spec, uri, show_progress=False).finished == 2
    finally:
        ray.shutdown()
    write_report(uri, load_report(uri, "ui"), tmp_path / "report")  # as the launch does
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
                               "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).close()
                break
            except OSError:
                time.sleep(1)
        experiment = MlflowClient(uri).get_experiment_by_name("ui")
        monkeypatch.setenv(UI_ENV, f"http://127.0.0.1:{port}")  # the port `mlflow ui` serves
        page = dom(runs_view_url(uri, experiment.experiment_id), "convergence_rate")
        assert "convergence rates" in page  # the saved view is the one open
        assert "convergence_rate" in page and "Error loading shared view" not in page
        for overrides in spec.configurations():
            assert run_name(overrides) in page
        assert "/ seed 0" not in page  # seed runs are filtered out of this view
        # The seeds' curves, one mean line with its band per configuration, drawn by MLflow.
        page = dom(curves_view_url(uri, experiment.experiment_id),
                   "Group by: airsearch.configuration", "eval/count_accuracy")
        assert "curves by configuration" in page
        assert "Group by: airsearch.configuration" in page and "eval/count_accuracy" in page
        for overrides in spec.configurations():
            assert f"Group: {run_name(overrides)}" in page
        # The report run's artifacts: the figures that compare the configurations.
        (report,) = MlflowClient(uri).search_runs([experiment.experiment_id],
                                                  "tags.`airsearch.kind` = 'report'")
        page = dom(f"http://127.0.0.1:{port}/#/experiments/{experiment.experiment_id}/runs/"
                   f"{report.info.run_id}/artifacts", "time_to_count.png")
        for figure in ("rate_by_configuration.png", "time_to_count.png",
                       "seeds_eval_count_accuracy.png"):
            assert figure in page
        # A configuration's page in the training layout: the link says so (MLflow 3.17
        # otherwise shows the GenAI one, with judges and evaluations, to a fresh browser).
        parent = MlflowClient(uri).search_runs([experiment.experiment_id],
                                               "tags.`airsearch.kind` = 'configuration'")[0]
        classic = dom(run_url(uri, experiment.experiment_id, parent.info.run_id), "Model metrics")
        genai = dom(run_url(uri, experiment.experiment_id, parent.info.run_id).split("?")[0],
                    "Judges")
        assert "Model metrics" in classic and parent.info.run_name in classic
        assert "Judges" not in classic and "Judges" in genai
    finally:
        server.terminate()
        server.wait(timeout=30)
