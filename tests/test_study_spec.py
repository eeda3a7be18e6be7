"""Study files are validated up front: each bad file fails naming the file, field and allowed."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from airsearch.study.space import DefineByRun
from airsearch.study.spec import SpecError, config_id
from airsearch.study.spec_file import load_spec

STUDIES = Path(__file__).resolve().parents[1] / "studies"

GOOD = {
    "name": "t",
    "config": {"model.lstm_size": 32},
    "seeds": 3,
    "training": {"steps": 20, "eval_every": 10},
    "convergence": {"threshold": 0.9, "hold": 1},
    "search": {"mode": "grid", "space": {"init.decoder_bias": [-2.0, 0.0]}},
}


def write(tmp_path: Path, doc: dict) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def with_(**changes: object) -> dict:
    doc = {**GOOD, **changes}
    return {k: v for k, v in doc.items() if v is not None}


def optuna_search(space: dict, **extra: object) -> dict:
    return {"mode": "optuna", "budget": 4, "space": space, **extra}


@pytest.mark.parametrize("doc, field, allowed", [
    (with_(colour="red"), "colour", "allowed: name, config"),
    (with_(name="bad name!"), "name", "letters, digits"),
    (with_(config={"model.lstm_sise": 32}), "config", "model.lstm_size"),
    (with_(config={"model.lstm_size": "big"}), "config.model.lstm_size", "int in [1, 4096]"),
    (with_(config={"init.scheme": "xavier"}), "config.init.scheme", "one of air, pytorch"),
    (with_(config={"train.steps": 5}), "config.train.steps", "training.steps"),
    (with_(seeds=0), "seeds", "an integer >= 1"),
    (with_(seeds=[1, 1]), "seeds", "distinct non-negative"),
    (with_(training={"steps": -1}), "training.steps", "int in [1, 100000000]"),
    (with_(training={"steps": 0}), "training.steps", "int in [1, 100000000]"),
    (with_(name="a" * 501), "name", "at most 200 characters"),
    (with_(reference={"init.decoder_bias": 1.0}), "reference", "not a configuration of the grid"),
    (with_(reference={"train.lr": 1e-3}), "reference.train.lr", "unknown field"),
    (with_(search={"mode": "grid", "configurations": []}), "search.configurations",
     "non-empty list"),
    (with_(search={"mode": "grid", "configurations": [{"model.lstm_size": 8}]}),
     "search.configurations[0].model.lstm_size", "also set in config"),
    (with_(search={"mode": "grid", "configurations": [{}, {"init.decoder_bias": "dark"}]}),
     "search.configurations[1].init.decoder_bias", "float in [-20.0, 20.0]"),
    (with_(search={"mode": "grid", "configurations": [{}],
                   "space": {"init.decoder_bias": [0.0]}}),
     "search.configurations", "instead of search.space"),
    (with_(scheduler={"kind": "hyperband"}), "scheduler.kind", "one of none, asha"),
    (with_(scheduler={"kind": "asha", "grace": 1.0}), "scheduler.grace", "in (0, 1)"),
    (with_(scheduler={"kind": "asha", "reduction_factor": 1}), "scheduler.reduction_factor",
     "an integer >= 2"),
    (with_(scheduler={"grace": 0.5}), "scheduler", "need scheduler.kind: asha"),
    (with_(convergence={"threshold": 1.5}), "convergence.threshold", "float in [0.0, 1.0]"),
    (with_(convergence={"hold": 0}), "convergence.hold", "int in [1, inf]"),
    (with_(objective={"tie_break": "elbo"}), "objective.tie_break", "eval/count_accuracy"),
    (with_(search={"mode": "bayes", "space": {}}), "search.mode", "one of grid, optuna"),
    (with_(search={"mode": "grid", "space": {"init.decoder_bias": {"low": -2, "high": 0}}}),
     "search.space.init.decoder_bias", "allowed: values, when"),
    (with_(search={"mode": "grid", "space": {"data.digit_size": [21.0, 200.0]}}),
     "search.space.data.digit_size.values", "float in [4.0, 128.0]"),
    (with_(search={"mode": "grid", "space": {"model.lstm_size": [8]}}),
     "search.space.model.lstm_size", "also set in config"),
    (with_(search={"mode": "grid", "space": {"init.decoder_bias": [0.0]}, "budget": 3}),
     "search.budget", "only applies to mode optuna"),
    (with_(search=optuna_search({"train.lr": {"low": 1e-5, "high": 2.0, "log": True}})),
     "search.space.train.lr.high", "float in (0.0, 1.0]"),
    (with_(search=optuna_search({"train.lr": {"low": 1e-3, "high": 1e-5}})),
     "search.space.train.lr", "must be below high"),
    (with_(search=optuna_search({"init.decoder_bias": {"low": -2.0, "high": 1.0,
                                                       "log": True}})),
     "search.space.init.decoder_bias.log", "low > 0"),
    (with_(search=optuna_search({"init.where_loc": {"low": 0, "high": 1}})),
     "search.space.init.where_loc", "one of prior, zero"),
    (with_(search=optuna_search({"train.lr": {"low": 1e-5, "high": 1e-3}}, sampler="cmaes")),
     "search.sampler", "one of tpe, random"),
    (with_(search=optuna_search({"train.lr": {"low": 1e-5, "high": 1e-3}}, budget=0)),
     "search.budget", "an integer >= 1"),
    (with_(search=optuna_search({"train.lr": {"low": 1e-5, "high": 1e-3}},
                                points_to_evaluate=[{"train.lr": 0.5}])),
     "search.points_to_evaluate[0].train.lr", "outside the search space"),
    (with_(search=optuna_search({"prior.z_pres.final": {"low": 1e-9, "high": 0.5, "log": True,
                                                        "when": {"prior.z_pres.schedule":
                                                                 ["linear"]}}})),
     "search.space.prior.z_pres.final.when.prior.z_pres.schedule", "listed earlier"),
    (with_(search={"mode": "grid", "space": {
        "prior.z_pres.schedule": ["constant", "linear"],
        "prior.z_pres.final": {"values": [0.1], "when": {"prior.z_pres.schedule": ["logit"]}}}}),
     "search.space.prior.z_pres.final.when.prior.z_pres.schedule", "allowed: constant, linear"),
    (with_(search={"mode": "grid", "space": {"data.max_digits": [2, 5]}}),
     "search.space", "must be <= model.max_steps"),
    (with_(resources={"cpus": 0}), "resources.cpus", "a number > 0"),
    (with_(resources={"gpus": 1.5}), "resources.gpus", "a fraction of one GPU"),
    (with_(max_concurrent=0), "max_concurrent", "an integer >= 1"),
])
def test_bad_file_names_file_field_and_allowed(tmp_path: Path, doc: dict, field: str,
                                               allowed: str) -> None:
    path = write(tmp_path, doc)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    message = str(info.value)
    assert message.startswith(f"{path}: {field}"), message
    assert allowed in message, message


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="no such study file"):
        load_spec(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(bad)


def test_grid_drops_inactive_keys_and_duplicates(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, with_(search={"mode": "grid", "space": {
        "prior.z_pres.schedule": ["constant", "exponential"],
        "prior.z_pres.final": {"values": [1e-5, 1e-10],
                               "when": {"prior.z_pres.schedule": "exponential"}}}})))
    assert spec.configurations() == [
        {"prior.z_pres.schedule": "constant"},
        {"prior.z_pres.schedule": "exponential", "prior.z_pres.final": 1e-5},
        {"prior.z_pres.schedule": "exponential", "prior.z_pres.final": 1e-10}]
    assert spec.storage == str((Path.cwd() / "runs" / "t").resolve())


def test_optuna_space_suggests_conditional_keys_only_when_active(tmp_path: Path) -> None:
    import optuna

    spec = load_spec(write(tmp_path, with_(search=optuna_search({
        "prior.z_pres.schedule": ["constant", "exponential"],
        "prior.z_pres.final": {"low": 1e-10, "high": 0.5, "log": True,
                               "when": {"prior.z_pres.schedule": ["exponential"]}},
        "model.mlp_depth": {"low": 1, "high": 3}}))))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: DefineByRun(spec.space)(t) or 0.0, n_trials=20)
    for trial in study.trials:
        params = trial.params
        assert ("prior.z_pres.final" in params) == (params["prior.z_pres.schedule"]
                                                    == "exponential")
        assert isinstance(params["model.mlp_depth"], int)
        spec.config_for(params)


@pytest.mark.parametrize("path", sorted(STUDIES.glob("**/*.yaml")), ids=lambda p: p.name)
def test_shipped_studies_are_valid_and_say_what_they_ask(path: Path) -> None:
    spec = load_spec(path)
    assert spec.name == path.stem
    assert "minutes" in spec.question or "hours" in spec.question
    assert spec.trial_count >= 1


def test_duplicate_yaml_keys_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "study.yaml"
    path.write_text("name: a\nseeds: 2\nseeds: 3\n"
                    "search: {mode: grid, space: {init.decoder_bias: [0.0]}}\n")
    with pytest.raises(SpecError, match="duplicate key 'seeds'"):
        load_spec(path)


def test_listed_configurations_and_reference(tmp_path: Path) -> None:
    """A grid may list whole configurations; the reference defaults to the first one."""
    listed = [{}, {"init.decoder_bias": 0.0}, {"init.decoder_bias": 0.0, "init.where_sd": 1.0},
              {}]
    spec = load_spec(write(tmp_path, with_(search={"mode": "grid", "configurations": listed})))
    assert spec.configurations() == listed[:3]  # duplicates trained once
    assert spec.varied == ("init.decoder_bias", "init.where_sd")
    assert spec.reference == {} and spec.trial_count == 3
    named = with_(search={"mode": "grid", "configurations": listed},
                  reference={"init.decoder_bias": 0.0})
    spec = load_spec(write(tmp_path, named))
    assert spec.reference == {"init.decoder_bias": 0.0}
    assert spec.reference_id == config_id({"init.decoder_bias": 0.0})


def test_reference_of_a_product_grid_is_its_first_point(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, GOOD))
    assert spec.reference == spec.configurations()[0] == {"init.decoder_bias": -2.0}


def test_diverged_seeds_do_not_break_ties(tmp_path: Path) -> None:
    """All-diverged seeds (frozen weights at 0.9 accuracy) rank below over-counting ones
    (0.5): a diverged seed's accuracy is not a result."""
    from airsearch.study.trial import final_metrics
    from airsearch.training.records import SeedRecord

    spec = load_spec(write(tmp_path, GOOD))

    def objective(outcome: str, accuracy: float) -> float:
        seeds = [SeedRecord(seed=s, outcome=outcome, final={"eval/count_accuracy": accuracy},
                            steps_to_converge=None, seconds_to_converge=None, confusion=[])
                 for s in spec.seeds]
        return final_metrics(spec, {}, seeds, "", {}, {})["objective"]

    assert objective("diverged", 0.9) == 0.0
    assert objective("over_counting", 0.5) > objective("diverged", 0.9)


@pytest.mark.parametrize("command", [["list"], ["status", "x"], ["report", "x"]])
def test_reading_commands_never_create_a_tracking_store(tmp_path: Path, monkeypatch,
                                                        command: list[str]) -> None:
    from click.testing import CliRunner

    from cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    result = CliRunner().invoke(main, ["study", *command])
    assert result.exit_code == 1 and "no tracking store at" in result.output
    assert "--tracking-uri" in result.output and not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize("content, said", [
    (b"\x89PNG\r\n\x1a\n\x00\x00binary junk", "not a text file"),
    (b"a: &x [1, 1, 1, 1, 1, 1, 1, 1, 1]\nb: &y [*x, *x, *x, *x, *x, *x, *x, *x, *x]\n"
     b"c: [*y, *y, *y, *y, *y, *y, *y, *y, *y]\n",
     r"alias \*x is not allowed.*\(line 2, column 8\)"),
    (b"#" * 1_000_001, "is not a study file"),
])
def test_files_that_are_not_study_files_are_refused_in_one_line(tmp_path: Path, content: bytes,
                                                                said: str) -> None:
    path = tmp_path / "study.yaml"
    path.write_bytes(content)
    with pytest.raises(SpecError, match=said) as caught:
        load_spec(path)
    assert len(str(caught.value)) < 400 and "\n" not in str(caught.value)


@pytest.mark.parametrize("training, convergence, said", [
    ({"steps": 30, "eval_every": 10}, {"hold": 50}, "training evaluates 3 times"),
    ({"steps": 1e30}, {}, "training.steps"),
])
def test_values_that_pass_alone_but_cannot_work_are_refused(tmp_path: Path, training: dict,
                                                            convergence: dict, said: str) -> None:
    with pytest.raises(SpecError, match=said):
        load_spec(write(tmp_path, with_(training=training, convergence=convergence)))


def test_a_study_tried_small_runs_apart_from_the_full_one(tmp_path: Path, monkeypatch) -> None:
    from click.testing import CliRunner

    from cli import main

    monkeypatch.chdir(tmp_path)
    path = STUDIES / "output_init.yaml"
    full = load_spec(path)
    small = load_spec(path, {"steps": 500, "seeds": 2, "set": {"data.train_images": "2048"}})
    assert small.name.startswith("output_init-try-") and small.storage != full.storage
    assert (small.steps, small.seeds, small.fixed["data.train_images"]) == (500, (0, 1), 2048)
    assert small.configurations() == full.configurations()
    other = load_spec(path, {"steps": 400})
    assert other.name not in (small.name, full.name)  # another trial run, another study
    result = CliRunner().invoke(main, ["study", "launch", str(path), "--steps", "500",
                                       "--seeds", "2", "--set", "data.train_images=2048",
                                       "--dry-run"])
    assert result.exit_code == 0 and f"as study {small.name}" in result.output
    assert "training: 500 steps" in result.output
    refused = CliRunner().invoke(main, ["study", "launch", str(path), "--set",
                                        "prior.z_pres.final=1e-3", "--dry-run"])
    assert refused.exit_code == 1
    assert "prior.z_pres.final has no effect here" in refused.output
