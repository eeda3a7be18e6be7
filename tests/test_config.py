"""AIRConfig: flat keys, validation, coercion of CLI strings and error messages."""

from __future__ import annotations

import re

import pytest

from airsearch.config import (
    AIRConfig,
    ConfigError,
    coerce,
    knob_specs,
    parse_assignments,
)


def test_flat_round_trip_defaults():
    """to_flat/from_flat loses or changes nothing for the defaults."""
    config = AIRConfig()
    flat = config.to_flat()
    assert AIRConfig.from_flat(flat) == config
    assert AIRConfig.from_flat(flat).to_flat() == flat


def test_flat_round_trip_with_overrides():
    """Non-default values of every type survive a round trip, including nested keys."""
    overrides = {"prior.z_pres.schedule": "exponential", "prior.z_pres.initial": 0.999,
                 "prior.z_pres.final": 1e-7, "train.lr": 3e-4, "model.activation": "relu",
                 "init.scheme": "pytorch", "train.steps": 7}
    config = AIRConfig.from_flat(overrides)
    flat = config.to_flat()
    for key, value in overrides.items():
        assert flat[key] == value
    assert AIRConfig.from_flat(flat) == config
    assert config.prior.z_pres.schedule == "exponential"


def test_from_flat_keeps_base_untouched():
    """from_flat with a base copies it: the base is not mutated."""
    base = AIRConfig.from_flat({"train.lr": 0.5})
    derived = AIRConfig.from_flat({"train.steps": 3}, base=base)
    assert derived.train.lr == 0.5 and derived.train.steps == 3
    assert base.train.steps == AIRConfig().train.steps


def test_every_default_validates():
    """Each knob's default is inside its allowed range, and the whole default config is valid."""
    AIRConfig().validate()
    for key, spec in knob_specs().items():
        AIRConfig.from_flat({key: spec.default})
        assert isinstance(spec.default, spec.type), key


def test_flat_keys_are_dotted_and_complete():
    """to_flat covers every knob, and nested sections are dotted (prior.z_pres.final)."""
    flat = AIRConfig().to_flat()
    assert set(flat) == set(knob_specs())
    assert "prior.z_pres.final" in flat and "init.decoder_bias" in flat


@pytest.mark.parametrize("key, raw, expected", [
    ("train.steps", "20", 20),
    ("train.steps", "1e3", 1000),
    ("train.lr", "1e-4", 1e-4),
    ("train.lr", "0.001", 0.001),
    ("prior.z_pres.initial", "0.999999", 0.999999),
    ("model.activation", "relu", "relu"),
    ("train.batch_size", 16.0, 16),
])
def test_coercion_of_cli_strings(key, raw, expected):
    """CLI strings become the key's type (int, float, str)."""
    value = coerce(key, raw)
    assert value == expected
    assert type(value) is type(expected)
    config = AIRConfig.from_flat({key: raw})
    assert config.to_flat()[key] == expected


def _error(flat):
    with pytest.raises(ConfigError) as info:
        AIRConfig.from_flat(flat)
    return str(info.value)


def test_unknown_key_is_named():
    """An unknown key names itself and lists the known keys."""
    msg = _error({"train.learning_rate": "1e-4"})
    assert "train.learning_rate" in msg
    assert "train.lr" in msg


def test_bad_choice_names_key_and_choices():
    """A bad choice names the key and every allowed value."""
    msg = _error({"prior.z_pres.schedule": "cosine"})
    assert "prior.z_pres.schedule" in msg and "cosine" in msg
    for choice in ("constant", "linear", "exponential", "logit"):
        assert choice in msg


@pytest.mark.parametrize("key, value", [
    ("train.lr", "2.0"),
    ("train.batch_size", "0"),
    ("model.max_steps", "11"),
    ("data.canvas_size", "8"),
    ("train.steps", "-1"),
])
def test_out_of_range_names_key_and_range(key, value):
    """Out-of-range values name the key and the interval."""
    msg = _error({key: value})
    assert key in msg
    spec = knob_specs()[key]
    assert spec.allowed() in msg


@pytest.mark.parametrize("key, value", [
    ("prior.z_pres.initial", "1.0"),
    ("prior.z_pres.initial", "0"),
    ("prior.z_pres.final", "1"),
    ("prior.z_pres.final", "0.0"),
    ("train.lr", "0"),
    ("prior.where_shift_sd", "0"),
    ("init.where_sd", "0.0"),
])
def test_open_bounds_reject_the_bound(key, value):
    """Open bounds exclude the endpoint itself (p = 1 would make the prior logit infinite)."""
    msg = _error({key: value})
    assert key in msg
    assert "(" in msg or ")" in msg


def test_open_bounds_accept_values_just_inside():
    """Values just inside an open bound are accepted (1 - 1e-15 is a published prior)."""
    config = AIRConfig.from_flat({"prior.z_pres.initial": 1 - 1e-15, "prior.z_pres.final": 1e-7})
    assert config.prior.z_pres.initial < 1.0


@pytest.mark.parametrize("key, value", [
    ("train.steps", "ten"),
    ("train.steps", True),
    ("train.lr", "fast"),
    ("train.lr", False),
])
def test_wrong_type_names_key_and_type(key, value):
    """A value of the wrong type names the key and the expected type."""
    msg = _error({key: value})
    assert key in msg
    assert knob_specs()[key].type.__name__ in msg


@pytest.mark.parametrize("raw", ["2.5", 2.5, "1e-1"])
def test_fractional_int_rejected_not_truncated(raw):
    """An int key given a fractional value (CLI string or float) is an error, never truncated."""
    msg = _error({"train.steps": raw})
    assert "train.steps" in msg and "int" in msg


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_floats_rejected(value):
    """nan/inf never pass a numeric range check."""
    msg = _error({"train.lr": value})
    assert "train.lr" in msg


def test_max_digits_beyond_max_steps():
    """data.max_digits > model.max_steps is rejected naming both keys."""
    msg = _error({"data.max_digits": "4", "model.max_steps": "3"})
    assert "data.max_digits" in msg and "model.max_steps" in msg
    AIRConfig.from_flat({"data.max_digits": "4", "model.max_steps": "4"})


def test_min_digits_beyond_max_digits():
    """data.min_digits > data.max_digits is rejected naming both keys."""
    msg = _error({"data.min_digits": "2", "data.max_digits": "1"})
    assert "data.min_digits" in msg and "data.max_digits" in msg


def test_learning_rate_decay_must_start_before_it_ends():
    msg = _error({"train.lr_decay_start": 0.8, "train.lr_decay_end": 0.8})
    assert "train.lr_decay_start (0.8) must be < train.lr_decay_end (0.8)" in msg


def test_error_is_a_value_error():
    """ConfigError is a ValueError, so callers can catch either."""
    with pytest.raises(ValueError):
        AIRConfig.from_flat({"nope": 1})


def test_parse_assignments():
    """key=value pairs are split on the first '=' and stripped."""
    parsed = parse_assignments(["train.lr=1e-4", " model.activation = relu ", "a.b=x=y"])
    assert parsed == {"train.lr": "1e-4", "model.activation": "relu", "a.b": "x=y"}
    assert parse_assignments([]) == {}


@pytest.mark.parametrize("item", ["train.lr", "", "train.lr:1e-4"])
def test_parse_assignments_errors(item):
    """An item without '=' raises a ConfigError quoting it."""
    with pytest.raises(ConfigError) as info:
        parse_assignments([item])
    assert repr(item) in str(info.value)


def test_bool_keys_coerce_and_reject():
    """Every bool key accepts true/false/yes/no/1/0 strings and rejects anything else by name."""
    bools = [key for key, spec in knob_specs().items() if spec.type is bool]
    if not bools:
        pytest.skip("no bool knobs in this config")
    for key in bools:
        for raw, expected in (("true", True), ("False", False), ("yes", True), ("0", False)):
            assert AIRConfig.from_flat({key: raw}).to_flat()[key] is expected
        msg = _error({key: "maybe"})
        assert key in msg and "bool" in msg


@pytest.mark.parametrize("raw", [None, 5, [1, 2], 0.5])
def test_bool_keys_reject_non_bool_values(raw):
    """YAML null, 5 or a list is not a bool: the error names the key (not a silent cast)."""
    msg = _error({"model.residual_input": raw})
    assert "model.residual_input" in msg and "bool" in msg


def test_training_needs_at_least_one_step():
    msg = _error({"train.steps": 0})
    assert "train.steps" in msg and "[1, 100000000]" in msg


def test_where_scale_rule_follows_the_digit():
    fixed = AIRConfig.from_flat({"data.digit_size": 10.5, "prior.where_scale_rule": "fixed"})
    assert fixed.where_scale_prior() == (3.0, 0.2)
    default = AIRConfig.from_flat({"data.digit_size": 10.5})
    assert default.where_scale_prior() == pytest.approx((6.0, 0.4))
    rule = {"prior.where_scale_rule": "digit_size"}
    assert AIRConfig.from_flat(rule).where_scale_prior() == pytest.approx((3.0, 0.2))
    small = AIRConfig.from_flat({**rule, "data.digit_size": 10.5})
    assert small.where_scale_prior() == pytest.approx((6.0, 0.4))
    wide = AIRConfig.from_flat({**rule, "data.canvas_size": 100, "data.digit_size": 21.0})
    assert wide.where_scale_prior() == pytest.approx((6.0, 0.4))


@pytest.mark.parametrize("key, value, needs", [
    ("prior.z_pres.final", "1e-7", "prior.z_pres.schedule linear, exponential or logit"),
    ("estimator.temperature_final", "0.05", "estimator.kind=relaxed"),
    ("init.decoder_bias", "0", "init.scheme=air"),
    ("model.blur_until", "0.5", "model.blur_px > 0"),
])
def test_a_key_without_effect_is_refused_naming_what_enables_it(key, value, needs):
    overrides = {key: value, **({"init.scheme": "pytorch"} if key.startswith("init.") else {})}
    config = AIRConfig.from_flat(overrides)  # valid on its own ...
    with pytest.raises(ConfigError, match=f"{key} has no effect here: it needs {re.escape(needs)}"):
        config.check_effective(overrides)  # ... but set by a user, it would do nothing
    AIRConfig.from_flat({key: value, "prior.z_pres.schedule": "exponential",
                         "estimator.kind": "relaxed", "model.blur_px": 2.0}
                        ).check_effective([key])


def test_train_refuses_a_key_without_effect_before_any_work(tmp_path):
    from click.testing import CliRunner

    from cli import main

    result = CliRunner().invoke(main, ["train", "--set", "prior.z_pres.final=1e-7", "--out",
                                       str(tmp_path / "run")])
    assert result.exit_code == 2 and "prior.z_pres.final has no effect here" in result.output
    assert not (tmp_path / "run").exists()
