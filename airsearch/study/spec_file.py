"""Reading a study file: YAML in, a validated `StudySpec` out (airsearch.study.spec).

The whole file is validated before Ray starts, so a typo costs a second, not a cluster hour.
Every error names the file, the field and what is allowed.

Schema (every AIR knob is a dotted key of `airsearch.config.AIRConfig`):

    name: prior_annealing            # experiment name; letters, digits, - and _
    config: {data.digit_size: 21}    # fixed AIR knobs shared by every configuration
    seeds: 5                         # 5 -> seeds 0..4, or an explicit list [3, 7, 11]
    training: {steps: 2000, eval_every: 250}
    convergence: {threshold: 0.95, hold: 1}
    objective: {tie_break: eval/count_accuracy}   # or none
    reference: {prior.z_pres.schedule: constant}  # the configuration the others are tested
                                     # against; default: the first grid point (optuna: the
                                     # first of points_to_evaluate)
    search:
      mode: grid                     # grid: every combination of listed values
      space:
        prior.z_pres.schedule: [constant, exponential]
        prior.z_pres.final: {values: [1.0e-5, 1.0e-10],
                             when: {prior.z_pres.schedule: [linear, exponential]}}
    # or, one configuration per entry (e.g. change one knob at a time from a reference):
    search:
      mode: grid
      configurations:
        - {}                         # the fixed config alone
        - {model.likelihood_sd: 0.15}
        - {estimator.reinforce_warmup_end: 0.2, prior.z_pres.initial: 0.5}
    # or
    search:
      mode: optuna
      sampler: tpe                   # tpe | random
      seed: 0
      budget: 30                     # configurations Optuna proposes
      points_to_evaluate: [{train.lr: 1.0e-4}]
      space:
        train.lr: {low: 1.0e-5, high: 1.0e-3, log: true}   # type follows the knob
        model.mlp_depth: {low: 1, high: 3}
        init.where_loc: [prior, zero]                      # categorical
    scheduler: {kind: asha, grace: 0.25, reduction_factor: 2}  # stop configurations whose
                                     # seeds are clearly behind (Ray Tune ASHA); default none
    resources: {cpus: 1, gpus: 0}    # per trial; fractional gpus pack trials on one GPU
    max_concurrent: 2
    storage: ./runs/prior_annealing  # default ./runs/<name>, relative to the launch cwd

A key with `when` is only set while the keys it names take one of the listed values (e.g. a
decay's final value only matters when the schedule decays); in grid mode the combinations
that then coincide are trained once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from pathlib import Path
from typing import Any

import yaml

from airsearch.config import ConfigError, check_value, coerce, knob_specs, unknown_key_message
from airsearch.study.spec import (
    MAX_SEEDS,
    MODES,
    OWNED_KEYS,
    SAMPLERS,
    SCHEDULERS,
    TIE_BREAKS,
    Dimension,
    EarlyStopping,
    SpecError,
    StudySpec,
    config_id,
)

TOP_LEVEL = ("name", "config", "seeds", "training", "convergence", "objective", "search",
             "reference", "scheduler", "resources", "max_concurrent", "storage")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
MAX_NAME = 200  # names an MLflow experiment (at most 500 characters) and a folder


MAX_FILE_BYTES = 1_000_000  # a study file is a page of YAML; anything larger is not one


class _UniqueKeyLoader(yaml.SafeLoader):
    """Safe YAML that rejects a key given twice in one mapping (plain YAML keeps the last) and
    aliases (`*name`), which a study file never needs and which can expand a few lines into
    gigabytes."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, f"alias *{event.anchor} is not allowed in a study file: write the "
                "value out", event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (a later value would silently replace "
                    "the earlier one)", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_spec(path: str | Path, trial_run: dict[str, Any] | None = None) -> StudySpec:
    """Read and validate a study file; raises SpecError naming the file and the field.

    trial_run ({"set": {key: value}, "steps": N, "seeds": K}, each optional) tries the study
    small: the changes are applied to the file's content and validated like it, and the study
    gets a name and storage of its own (the name plus a hash of the changes), so its results
    never mix with the full study's.
    """
    path = Path(path)
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise SpecError(f"{path}: {path.stat().st_size:,} bytes is not a study file "
                            f"(at most {MAX_FILE_BYTES:,}: a page of YAML)")
        text = path.read_bytes().decode("utf-8")
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader
    except FileNotFoundError:
        raise SpecError(f"{path}: no such study file") from None
    except UnicodeDecodeError as exc:
        raise SpecError(f"{path}: not a text file (byte {exc.start} is not UTF-8): a study file "
                        "is YAML") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML: {_one_line(exc)}") from None
    if trial_run:
        raw = _tried_small(raw, trial_run)
    return parse_spec(raw, path=str(path), question=_header(path))


def _tried_small(raw: Any, changes: dict[str, Any]) -> Any:
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        return raw  # parse_spec names what is wrong with the file itself
    tag = hashlib.sha1(json.dumps(changes, sort_keys=True, default=str).encode()).hexdigest()
    name = f"{raw['name']}-try-{tag[:6]}"
    doc = {**raw, "name": name}
    if changes.get("set"):
        doc["config"] = {**(raw.get("config") or {}), **changes["set"]}
    if changes.get("steps") is not None:
        doc["training"] = {**(raw.get("training") or {}), "steps": changes["steps"]}
    if changes.get("seeds") is not None:
        doc["seeds"] = changes["seeds"]
    if isinstance(raw.get("storage"), str):
        doc["storage"] = f"{raw['storage'].rstrip('/')}-try-{tag[:6]}"
    return doc


def _one_line(exc: yaml.YAMLError) -> str:
    """What YAML found wrong and where, on one bounded line."""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    mark = getattr(exc, "problem_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    return f"{problem[:200]}{where}"


def parse_spec(raw: Any, path: str = "<spec>", question: str = "") -> StudySpec:
    """Validate a parsed study file (a mapping) into a StudySpec."""
    v = _Validator(path)
    doc = v.mapping(raw, "the file", TOP_LEVEL)
    name = doc.get("name")
    if not isinstance(name, str) or not NAME_PATTERN.match(name) or len(name) > MAX_NAME:
        shown = f"{name[:40]!r}... ({len(name)} characters)" if isinstance(name, str) and len(
            name) > MAX_NAME else repr(name)
        v.fail("name", f"{shown} is not allowed; allowed: letters, digits, - and _, at most "
               f"{MAX_NAME} characters (it names the MLflow experiment and the results folder)")
    fixed = v.fixed_config(doc.get("config", {}))
    seeds = v.seeds(doc.get("seeds"))
    training = v.mapping(doc.get("training", {}), "training", ("steps", "eval_every"))
    convergence = v.mapping(doc.get("convergence", {}), "convergence", ("threshold", "hold"))
    steps = v.knob("train.steps", training.get("steps", knob_specs()["train.steps"].default),
                   "training.steps")
    eval_every = v.knob("train.eval_every", training.get("eval_every", max(1, steps // 10)),
                        "training.eval_every")
    threshold = v.knob("eval.threshold", convergence.get("threshold", 0.95),
                       "convergence.threshold")
    hold = v.knob("eval.hold", convergence.get("hold", 1), "convergence.hold")
    evaluations = -(-steps // eval_every)  # every eval_every steps, and at the last step
    if hold > evaluations:
        v.fail("convergence.hold", f"{hold} evaluations must reach the threshold, but "
               f"training evaluates {evaluations} times ({steps} steps, every {eval_every}): "
               "no seed could converge; allowed: at most "
               f"{evaluations}")
    objective = v.mapping(doc.get("objective", {}), "objective", ("tie_break",))
    tie_break = objective.get("tie_break", TIE_BREAKS[0])
    if tie_break not in TIE_BREAKS:
        v.fail("objective.tie_break", f"{tie_break!r} is not allowed; allowed: one of "
               + ", ".join(TIE_BREAKS))
    search = v.mapping(doc.get("search"), "search", ("mode", "space", "configurations",
                                                     "sampler", "seed", "budget",
                                                     "points_to_evaluate"))
    mode = search.get("mode")
    if mode not in MODES:
        v.fail("search.mode", f"{mode!r} is not allowed; allowed: one of {', '.join(MODES)}")
    listed: tuple[dict[str, Any], ...] = ()
    if "configurations" in search:
        if mode != "grid" or "space" in search:
            v.fail("search.configurations", "only in grid mode, instead of search.space")
        listed = v.listed(search["configurations"], fixed)
        space = _listed_space(listed)
    else:
        space = v.space(search.get("space"), mode, fixed)
    resources = v.mapping(doc.get("resources", {}), "resources", ("cpus", "gpus"))
    cpus = v.number(resources.get("cpus", 1), "resources.cpus", low=0.0, low_open=True)
    gpus = v.number(resources.get("gpus", 0), "resources.gpus", low=0.0)
    if gpus > 1 and not float(gpus).is_integer():
        v.fail("resources.gpus", f"{gpus} is not allowed; allowed: a fraction of one GPU "
               "(0 < gpus <= 1) or a whole number")
    max_concurrent = int(v.number(doc.get("max_concurrent", 1), "max_concurrent", low=1,
                                  integer=True))
    early_stopping = v.early_stopping(doc.get("scheduler", {}))
    storage = doc.get("storage", f"./runs/{name}")
    if not isinstance(storage, str) or not storage:
        v.fail("storage", f"{storage!r} is not allowed; allowed: a folder path")
    extra: dict[str, Any] = {}
    if mode == "grid":
        for key in ("sampler", "seed", "budget", "points_to_evaluate"):
            if key in search:
                v.fail(f"search.{key}", "only applies to mode optuna; allowed in grid mode: "
                       "mode, space")
    else:
        sampler = search.get("sampler", "tpe")
        if sampler not in SAMPLERS:
            v.fail("search.sampler", f"{sampler!r} is not allowed; allowed: one of "
                   + ", ".join(SAMPLERS))
        extra = {
            "sampler": sampler,
            "sampler_seed": int(v.number(search.get("seed", 0), "search.seed", low=0,
                                         integer=True)),
            "budget": int(v.number(search.get("budget"), "search.budget", low=1,
                                   integer=True)),
            "points_to_evaluate": v.points(search.get("points_to_evaluate", []), space),
        }
    spec = StudySpec(name=name, path=path, fixed=fixed, seeds=seeds, steps=steps,
                     eval_every=eval_every, threshold=threshold, hold=hold, tie_break=tie_break,
                     mode=mode, space=space, cpus=cpus, gpus=gpus,
                     max_concurrent=max_concurrent, storage=str(Path(storage).expanduser()
                                                                .resolve()),
                     listed=listed, question=question, early_stopping=early_stopping,
                     **extra)
    v.whole_configs(spec)
    return dataclasses.replace(spec, reference=v.reference(doc.get("reference"), spec))


class _Validator:
    """Field-by-field checks that all raise SpecError with the file and field named."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.specs = knob_specs()

    def fail(self, where: str, message: str) -> None:
        raise SpecError(f"{self.path}: {where}: {message}")

    def mapping(self, raw: Any, where: str, allowed: tuple[str, ...]) -> dict[str, Any]:
        if not isinstance(raw, dict):
            self.fail(where, f"expected a mapping with keys {', '.join(allowed)}, got {raw!r}")
        unknown = [k for k in raw if k not in allowed]
        if unknown:
            field_name = unknown[0] if where == "the file" else f"{where}.{unknown[0]}"
            self.fail(field_name, f"unknown field; allowed: {', '.join(allowed)}")
        return raw

    def number(self, raw: Any, where: str, low: float | None = None, low_open: bool = False,
               integer: bool = False) -> float:
        kind = "an integer" if integer else "a number"
        ok = isinstance(raw, (int, float)) and not isinstance(raw, bool)
        if ok and integer and isinstance(raw, float) and not raw.is_integer():
            ok = False
        if ok and (not math.isfinite(raw) or (low is not None and
                                             (raw < low or (low_open and raw == low)))):
            ok = False
        if not ok:
            bound = "" if low is None else f" {'>' if low_open else '>='} {low}"
            self.fail(where, f"{raw!r} is not allowed; allowed: {kind}{bound}")
        return raw

    def knob(self, key: str, raw: Any, where: str) -> Any:
        """One value of an AIR knob, coerced and range-checked."""
        if key not in self.specs:
            self.fail(where, unknown_key_message(key))
        try:
            value = coerce(key, raw)
            check_value(key, value, self.specs[key])
        except ConfigError as exc:
            self.fail(where, str(exc))
        return value

    def early_stopping(self, raw: Any) -> EarlyStopping:
        doc = self.mapping(raw, "scheduler", ("kind", "grace", "reduction_factor"))
        kind = doc.get("kind", "none")
        if kind not in SCHEDULERS:
            self.fail("scheduler.kind", f"{kind!r} is not allowed; allowed: one of "
                      + ", ".join(SCHEDULERS))
        if kind == "none":
            if set(doc) - {"kind"}:
                self.fail("scheduler", "grace and reduction_factor need scheduler.kind: asha")
            return EarlyStopping()
        grace = self.number(doc.get("grace", 0.25), "scheduler.grace", low=0.0, low_open=True)
        if grace >= 1:
            self.fail("scheduler.grace", f"{grace!r} is not allowed; allowed: a fraction of "
                      "training.steps in (0, 1)")
        factor = int(self.number(doc.get("reduction_factor", 2), "scheduler.reduction_factor",
                                 low=2, integer=True))
        return EarlyStopping(kind, grace, factor)

    def fixed_config(self, raw: Any) -> dict[str, Any]:
        config = self.mapping(raw, "config", tuple(self.specs))
        for key in config:
            if key in OWNED_KEYS:
                self.fail(f"config.{key}", f"set it as {OWNED_KEYS[key]} instead")
        return {key: self.knob(key, value, f"config.{key}") for key, value in config.items()}

    def seeds(self, raw: Any) -> tuple[int, ...]:
        if isinstance(raw, list):
            if not raw or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                                  for s in raw) or len(set(raw)) != len(raw):
                self.fail("seeds", f"{raw!r} is not allowed; allowed: a count, or a list of "
                          "distinct non-negative integers")
            seeds = tuple(raw)
        else:
            seeds = tuple(range(int(self.number(raw, "seeds", low=1, integer=True))))
        if len(seeds) > MAX_SEEDS:
            self.fail("seeds", f"{len(seeds)} seeds; allowed: at most {MAX_SEEDS} (the "
                      "objective's tie-break weight assumes it)")
        return seeds

    def varied_key(self, key: str, where: str, fixed: dict[str, Any]) -> None:
        """A key a study varies (in its space or its listed configurations)."""
        if key not in self.specs:
            self.fail(where, unknown_key_message(key))
        if key in OWNED_KEYS:
            self.fail(where, f"not searchable here; set it as {OWNED_KEYS[key]}")
        if key in fixed:
            self.fail(where, "also set in config; a key is either fixed or searched")

    def listed(self, raw: Any, fixed: dict[str, Any]) -> tuple[dict[str, Any], ...]:
        if not isinstance(raw, list) or not raw:
            self.fail("search.configurations", "expected a non-empty list of {key: value} "
                      "mappings ({} is the fixed config alone)")
        out = []
        for i, entry in enumerate(raw):
            where = f"search.configurations[{i}]"
            if not isinstance(entry, dict):
                self.fail(where, f"expected a mapping of AIR config keys to values, got "
                          f"{entry!r}")
            chosen = {}
            for key, value in entry.items():
                self.varied_key(key, f"{where}.{key}", fixed)
                chosen[key] = self.knob(key, value, f"{where}.{key}")
            out.append(chosen)
        return tuple(out)

    def space(self, raw: Any, mode: str, fixed: dict[str, Any]) -> tuple[Dimension, ...]:
        if not isinstance(raw, dict) or not raw:
            self.fail("search.space", "expected a non-empty mapping of AIR config keys to "
                      "values or ranges")
        dims: list[Dimension] = []
        for key, entry in raw.items():
            where = f"search.space.{key}"
            self.varied_key(key, where, fixed)
            dims.append(self.dimension(key, entry, mode, where, fixed, dims))
        return tuple(dims)

    def dimension(self, key: str, entry: Any, mode: str, where: str, fixed: dict[str, Any],
                  earlier: list[Dimension]) -> Dimension:
        spec = self.specs[key]
        if isinstance(entry, list):
            entry = {"values": entry}
        allowed = ("values", "when") if mode == "grid" else ("values", "low", "high", "log",
                                                             "step", "when")
        entry = self.mapping(entry, where, allowed)
        when = self.when(entry.get("when", {}), where, fixed, earlier)
        if "values" in entry:
            if any(k in entry for k in ("low", "high", "log", "step")):
                self.fail(where, "give either values or a range (low, high), not both")
            values = entry["values"]
            if not isinstance(values, list) or not values:
                self.fail(f"{where}.values", "expected a non-empty list")
            checked = tuple(self.knob(key, value, f"{where}.values") for value in values)
            if len(set(checked)) != len(checked):
                self.fail(f"{where}.values", f"repeated value in {list(checked)}")
            return Dimension(key, values=checked, when=when)
        if mode == "grid":
            self.fail(where, "grid mode needs a list of values")
        if spec.choices is not None or spec.type not in (int, float):
            self.fail(where, f"{spec.type.__name__} knob: give a list of choices; allowed: "
                      f"{spec.allowed()}")
        if "low" not in entry or "high" not in entry:
            self.fail(where, "a range needs low and high (or give a list of values)")
        low = self.knob(key, entry["low"], f"{where}.low")
        high = self.knob(key, entry["high"], f"{where}.high")
        if not low < high:
            self.fail(where, f"low ({low}) must be below high ({high})")
        log = entry.get("log", False)
        if not isinstance(log, bool):
            self.fail(f"{where}.log", f"{log!r} is not allowed; allowed: true, false")
        if log and low <= 0:
            self.fail(f"{where}.log", f"a log range needs low > 0, got {low}")
        step = entry.get("step")
        if step is not None:
            step = self.number(step, f"{where}.step", low=0, low_open=True,
                               integer=spec.type is int)
            if log:
                self.fail(f"{where}.step", "step and log cannot be combined (Optuna)")
        return Dimension(key, low=low, high=high, log=log, step=step, when=when)

    def when(self, raw: Any, where: str, fixed: dict[str, Any],
             earlier: list[Dimension]) -> tuple[tuple[str, tuple], ...]:
        raw = self.mapping(raw, f"{where}.when", tuple(self.specs))
        conditions = []
        earlier_keys = {dim.key: dim for dim in earlier}
        for key, allowed in raw.items():
            here = f"{where}.when.{key}"
            if key in fixed:
                self.fail(here, "is fixed in config, so the condition is constant; drop it")
            if key not in earlier_keys or earlier_keys[key].values is None:
                self.fail(here, "a condition must name a categorical key listed earlier in "
                          "search.space; allowed: "
                          + (", ".join(k for k, d in earlier_keys.items() if d.values)
                             or "none yet"))
            if not isinstance(allowed, list):
                allowed = [allowed]
            values = tuple(self.knob(key, value, here) for value in allowed)
            unknown = [x for x in values if x not in earlier_keys[key].values]
            if unknown:
                self.fail(here, f"{unknown[0]!r} is never searched; allowed: "
                          + ", ".join(map(str, earlier_keys[key].values)))
            conditions.append((key, values))
        return tuple(conditions)

    def points(self, raw: Any, space: tuple[Dimension, ...]) -> tuple[dict[str, Any], ...]:
        if not isinstance(raw, list):
            self.fail("search.points_to_evaluate", "expected a list of {key: value} mappings")
        dims = {dim.key: dim for dim in space}
        points = []
        for i, point in enumerate(raw):
            where = f"search.points_to_evaluate[{i}]"
            point = self.mapping(point, where, tuple(dims))
            checked: dict[str, Any] = {}
            for dim in space:
                if not dim.active(checked):
                    if dim.key in point:
                        self.fail(f"{where}.{dim.key}", "is inactive under this point's "
                                  "conditions; drop it")
                    continue
                if dim.key not in point:
                    self.fail(where, f"missing {dim.key} (every active searched key needs a "
                              "value)")
                value = self.knob(dim.key, point[dim.key], f"{where}.{dim.key}")
                inside = (value in dim.values if dim.values is not None
                          else dim.low <= value <= dim.high)
                if not inside:
                    self.fail(f"{where}.{dim.key}", f"{value!r} is outside the search space; "
                              f"allowed: {dim.describe()}")
                checked[dim.key] = value
            points.append(checked)
        return tuple(points)

    def reference(self, raw: Any, spec: StudySpec) -> dict[str, Any] | None:
        """The named reference configuration, checked to be one the study trains."""
        known = (spec.configurations() if spec.mode == "grid"
                 else list(spec.points_to_evaluate))
        if raw is None:
            return known[0] if known else None
        point = self.mapping(raw, "reference", spec.varied)
        chosen = {key: self.knob(key, value, f"reference.{key}") for key, value in point.items()}
        if config_id(chosen) not in {config_id(c) for c in known}:
            where = "the grid" if spec.mode == "grid" else "search.points_to_evaluate"
            shown = "; ".join(json.dumps(c, default=str) for c in known[:6])
            self.fail("reference", f"{json.dumps(chosen, default=str)} is not a configuration "
                      f"of {where}; allowed: {shown}{' ...' if len(known) > 6 else ''}")
        return chosen

    def whole_configs(self, spec: StudySpec) -> None:
        """Cross-key rules (e.g. max_digits <= max_steps) on every configuration we can list."""
        try:
            spec.config_for({})
        except ConfigError as exc:
            self.fail("config", str(exc))
        if spec.mode == "grid":
            candidates = spec.configurations()
        else:
            candidates = list(spec.points_to_evaluate) + [
                {dim.key: bound} for dim in spec.space
                for bound in (dim.values or (dim.low, dim.high))]
        inert_everywhere = set(spec.fixed)
        for overrides in candidates:
            try:
                config = spec.config_for(overrides)
                if spec.mode == "grid":  # Optuna's `when` sets a key only where it acts
                    config.check_effective(overrides)
            except ConfigError as exc:
                self.fail("search.space", f"configuration {overrides} is invalid: {exc}")
            for key in list(inert_everywhere):
                try:
                    config.check_effective([key])
                    inert_everywhere.discard(key)
                except ConfigError:
                    pass
        if inert_everywhere:  # a fixed key may act in some configurations only
            key = sorted(inert_everywhere)[0]
            try:
                spec.config_for({}).check_effective([key])
            except ConfigError as exc:
                self.fail(f"config.{key}", f"in every configuration: {exc}")


def _listed_space(listed: tuple[dict[str, Any], ...]) -> tuple[Dimension, ...]:
    """The keys the listed configurations vary, each with the values it takes."""
    values: dict[str, list[Any]] = {}
    for entry in listed:
        for key, value in entry.items():
            if value not in values.setdefault(key, []):
                values[key].append(value)
    return tuple(Dimension(key, values=tuple(v)) for key, v in values.items())


def _header(path: Path) -> str:
    """The leading comment block of a study file: the question it asks, and its cost."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    return "\n".join(lines).strip()
