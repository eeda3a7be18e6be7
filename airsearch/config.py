"""One configuration object for everything a study can vary.

Every knob is a field of a small dataclass; the whole config flattens to dotted keys
(`prior.z_pres.final`, `init.decoder_bias`, ...). Those keys are the single vocabulary
used by the CLI (`--set key=value`), study specs, Optuna, MLflow params and reports.
Validation happens up front and names the bad key and what is allowed.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from typing import Any

# The paper's multi-MNIST, for which the default inverse-scale prior (3 +- 0.2) was chosen.
REFERENCE_DIGIT_SIZE = 21.0
REFERENCE_CANVAS_SIZE = 50
# MNIST digits are size-normalised to a 20 x 20 box inside their 28 x 28 patch: a digit drawn
# at side s has ink about 20/28 s high (or wide).
MNIST_INK_FRACTION = 20 / 28
# model.likelihood_sd's auto rule where digits may overlap (docs/results.md, section 7): at 0.15
# the ink that a glimpse of one of two crossing digits leaves unexplained is worth hundreds of
# nats, and a third step buys it; at 0.3 it is worth a quarter as much.
DEFAULT_LIKELIHOOD_SD = 0.15
OVERLAP_LIKELIHOOD_SD = 0.3


# Keys that counted absolute steps, and the fractions of train.steps that replaced them.
RENAMED = {
    "prior.z_pres.hold": "prior.z_pres.decay_start",
    "prior.z_pres.duration": "prior.z_pres.decay_end",
    "estimator.reinforce_warmup": "estimator.reinforce_warmup_end",
    "estimator.temperature_duration": "estimator.temperature_end",
}


# How long and how often a run trains and is measured: not part of a recipe's name.
RUN_LENGTH_KEYS = ("train.steps", "train.eval_every", "data.train_images", "data.heldout_images")


class ConfigError(ValueError):
    """A config key or value is not allowed; the message names the key and the allowed values."""


def _knob(default: Any, help: str, choices: tuple | None = None, low: float | None = None,
          high: float | None = None, low_open: bool = False, high_open: bool = False) -> Any:
    meta = {"help": help, "choices": choices, "low": low, "high": high,
            "low_open": low_open, "high_open": high_open}
    return field(default=default, metadata=meta)


@dataclass
class DataConfig:
    canvas_size: int = _knob(50, "side of the square multi-MNIST canvas, pixels", low=16, high=256)
    min_digits: int = _knob(0, "fewest digits per image (counts are uniform over min..max)",
                            low=0, high=10)
    max_digits: int = _knob(2, "most digits per image", low=0, high=10)
    digit_size: float = _knob(21.0, "side of the resized 28x28 MNIST patch, pixels (paper: ~21)",
                              low=4.0, high=128.0)
    digit_size_jitter: float = _knob(0.0, "relative uniform jitter of digit_size (0.2 = +-20%)",
                                     low=0.0, high=0.9)
    digit_size_max: float = _knob(0.0, "sizes mixed in one image: each digit's side is drawn "
                                  "log-uniformly between data.digit_size (the smallest) and this, "
                                  "pixels; 0: every digit data.digit_size (up to the jitter)",
                                  low=0.0, high=128.0)
    overlap: str = _knob("avoid", "avoid: patch boxes never intersect (the paper's "
                         "'non-overlapping' digits); boxes: boxes may intersect, strokes may not "
                         "add up past full ink (Pyro's generator, which redraws such images); "
                         "allow: digits overlap freely, crossing strokes clipped at full ink",
                         choices=("avoid", "boxes", "allow"))
    train_images: int = _knob(60000, "generated training images", low=64,
                              high=10_000_000)
    heldout_images: int = _knob(1000, "generated held-out images (from held-out digits)",
                                low=16, high=1_000_000)
    seed: int = _knob(0, "seed of the generated data set (independent of training seeds)", low=0)

    def digit_size_range(self) -> tuple[float, float]:
        """Smallest and largest digit side the data draws, pixels."""
        if self.digit_size_max:
            return self.digit_size, self.digit_size_max
        return (self.digit_size * (1 - self.digit_size_jitter),
                self.digit_size * (1 + self.digit_size_jitter))


@dataclass
class ModelConfig:
    max_steps: int = _knob(3, "inference steps, i.e. most objects AIR can explain", low=1, high=10)
    lstm_size: int = _knob(256, "LSTM hidden units", low=1, high=4096)
    mlp_width: int = _knob(256, "hidden units of every MLP (encoders, decoder, heads)", low=1,
                           high=4096)
    mlp_depth: int = _knob(2, "hidden layers of every MLP", low=1, high=8)
    activation: str = _knob("elu", "MLP non-linearity", choices=("elu", "relu"))
    glimpse_size: int = _knob(20, "side of the glimpse read and written, pixels", low=4, high=64)
    z_what_size: int = _knob(50, "dimensions of z_what", low=1, high=1024)
    likelihood_sd: float = _knob(0.0, "sd of the Gaussian pixel likelihood (at the start of "
                                 "training, when model.likelihood_sd_final is set); 0 (auto): "
                                 "0.15, or 0.3 where digits may overlap (data.overlap=boxes or "
                                 "allow), where a glimpse of one of two crossing digits leaves "
                                 "ink that a sharper likelihood pays a third step to explain",
                                 low=0.0, high=10.0)
    likelihood_sd_final: float = _knob(0.0, "sd the likelihood moves to (geometrically) between "
                                       "the fractions model.likelihood_sd_start and _end of "
                                       "train.steps; 0: model.likelihood_sd throughout. A small "
                                       "early sd keeps steps on for small digits; a larger late "
                                       "one stops a step paying for a few pixels of residual",
                                       low=0.0, high=10.0)
    likelihood_sd_start: float = _knob(0.4, "fraction of train.steps at which the sd starts "
                                       "moving to model.likelihood_sd_final", low=0.0, high=1.0)
    likelihood_sd_end: float = _knob(0.6, "fraction of train.steps at which the sd reaches "
                                     "model.likelihood_sd_final", low=0.0, high=1.0)
    composition: str = _knob("auto", "how the written glimpses make the canvas: sum (the "
                             "paper); saturate: min(1, sum), as data.overlap=allow adds "
                             "overlapping digits' ink and clips it at full ink, so two strokes "
                             "that cross are not drawn twice as dark; auto: saturate under "
                             "data.overlap=allow, sum otherwise",
                             choices=("auto", "sum", "saturate"))
    residual_input: bool = _knob(True, "DAIR (the paper's difference variant): each step "
                                 "encodes the image minus what earlier steps drew, so a step "
                                 "sees what is still unexplained")
    where_proposal: str = _knob("auto", "none: each step's z_where mean is the "
                                "location head's output; residual_peak: the head's output is "
                                "added to the shift of the window of the prior's size that "
                                "holds the most of what the step sees (DAIR: the image minus "
                                "what earlier steps drew; plain AIR: the image), so windows "
                                "start on objects however small; residual_object: as "
                                "residual_peak, then the window is centred on the ink connected "
                                "to that peak and sized to it (the scale prior.where_scale_loc "
                                "gives a 21 px digit, scaled to the ink's height and kept within "
                                "the data's digit sizes), so windows start framing objects of "
                                "any size, and ink wider than the largest digit (two that "
                                "touch or cross) is cut to one digit flush with its heavier "
                                "end; auto: residual_object where digit sizes vary "
                                "(data.digit_size_max or data.digit_size_jitter) or digits may "
                                "overlap (data.overlap boxes or allow), residual_peak otherwise",
                                choices=("none", "residual_peak", "residual_object", "auto"))
    proposal_mask: str = _knob("auto", "what the window proposal leaves out of what a step "
                               "sees: none; earlier_windows: what lies inside earlier steps' "
                               "windows, so a step does not start on what is left of a digit "
                               "an earlier window framed (a faint second drawing of it), which "
                               "holds only where digits do not overlap; auto: earlier_windows "
                               "where windows frame the ink of digits that do not overlap "
                               "(model.where_proposal residual_object, data.overlap=avoid), "
                               "none otherwise",
                               choices=("auto", "none", "earlier_windows"))
    decoder_sees_scale: bool = _knob(False, "the glimpse decoder also reads the window's "
                                     "inverse scale, so one decoder can draw digits of "
                                     "different sizes with their own stroke widths (a glimpse "
                                     "of a small digit is a blurred, thick-stroked one)")
    blur_px: float = _knob(0.0, "sd in pixels of a Gaussian blur under which the objective also "
                           "compares image and reconstruction early in training (0: off): a "
                           "window that misses a small digit then still gets a gradient "
                           "towards it", low=0.0, high=64.0)
    blur_until: float = _knob(0.3, "fraction of train.steps over which the blurred comparison's "
                              "weight falls linearly from 1 to 0", low=0.0, high=1.0,
                              low_open=True)


@dataclass
class ZPresPrior:
    schedule: str = _knob("constant", "annealing of the prior success (presence) probability: "
                          "constant, linear in p, exponential (geometric in p) or logit (linear in "
                          "log-odds)", choices=("constant", "linear", "exponential", "logit"))
    initial: float = _knob(1e-4, "success probability at step 0 (and while held; the whole "
                           "run when the schedule is constant)",
                           low=0.0, high=1.0, low_open=True, high_open=True)
    final: float = _knob(1e-4, "success probability once the decay is over",
                         low=0.0, high=1.0, low_open=True, high_open=True)
    decay_start: float = _knob(0.0, "fraction of train.steps at the initial value before the "
                               "decay begins", low=0.0, high=1.0)
    decay_end: float = _knob(1.0, "fraction of train.steps at which the decay reaches the final "
                             "value", low=0.0, high=1.0)


@dataclass
class PriorConfig:
    z_pres: ZPresPrior = field(default_factory=ZPresPrior)
    where_scale_rule: str = _knob("digit_size", "fixed: the inverse-scale prior is "
                                  "prior.where_scale_loc +- prior.where_scale_sd as given; "
                                  "digit_size: both are multiplied by (21 / data.digit_size) "
                                  "x (data.canvas_size / 50), so the prior window frames the "
                                  "digit as 3 +- 0.2 frames a 21 px digit on a 50 px canvas",
                                  choices=("fixed", "digit_size"))
    where_scale_loc: float = _knob(3.0, "prior mean of the inverse scale (3: the window is a third "
                                   "of the canvas)",
                                   low=0.0, high=100.0, low_open=True)
    where_scale_sd: float = _knob(0.2, "prior sd of the inverse scale", low=0.0, high=100.0,
                                  low_open=True)
    where_scale_range_sds: float = _knob(2.0, "sizes mixed in one image (data.digit_size_max): "
                                         "how many prior sd the smallest and the largest "
                                         "digit's inverse scale lie from the prior mean, halfway "
                                         "between them (fewer: a flatter prior, whose KL pulls "
                                         "windows less towards the middle size)",
                                         low=0.0, high=10.0, low_open=True)
    where_shift_sd: float = _knob(1.0, "prior sd of the shift (canvas spans [-1, 1])", low=0.0,
                                  high=100.0, low_open=True)


@dataclass
class InitConfig:
    scheme: str = _knob("air", "air: apply the output-layer settings below; pytorch: framework "
                        "default init everywhere (the settings below are ignored)",
                        choices=("air", "pytorch"))
    decoder_bias: float = _knob(-2.0, "decoder output-logit bias (0: mid-grey squares; the guide "
                                "then turns steps off)", low=-20.0, high=20.0)
    presence_bias: float = _knob(2.0, "presence-logit bias at start", low=-20.0, high=20.0)
    where_loc: str = _knob("prior", "initial z_where mean: prior (bias = prior mean) or zero",
                           choices=("prior", "zero"))
    where_sd: float = _knob(0.1, "initial z_where posterior sd (the blog: too large -> 0 steps)",
                            low=0.0, high=10.0, low_open=True)
    head_weight_scale: float = _knob(0.1, "multiplier on the output weights of the presence and "
                                     "location heads (small: start near the biases)",
                                     low=0.0, high=10.0)


@dataclass
class EstimatorConfig:
    baseline_input: str = _knob("image", "what the neural baseline sees: image, or image and "
                                "the continuous latents (never z_pres, which would bias it)",
                                choices=("image", "image_and_z"))
    baseline_width: int = _knob(256, "hidden units of the baseline MLP", low=1, high=4096)
    centre_signal: bool = _knob(True, "subtract a running mean of the learning signal before the "
                                "neural baseline (NVIL); without it the baseline must first "
                                "learn an offset of hundreds of nats")
    normalise_signal: bool = _knob(True, "divide the advantage by a running estimate of its sd "
                                   "(NVIL), so REINFORCE's step size does not follow the ELBO "
                                   "scale")
    signal_decay: float = _knob(0.9, "decay of the running mean/variance of the learning signal",
                                low=0.0, high=1.0, high_open=True)
    kind: str = _knob("reinforce", "gradient estimator for the number of objects: reinforce "
                      "(score function + NVIL + neural baseline), vimco (S-particle bound, "
                      "leave-one-out control variate; needs particles >= 2) or relaxed "
                      "(Concrete z_pres in training; the held-out count stays the deterministic "
                      "presence > 0.5 rule)", choices=("reinforce", "vimco", "relaxed"))
    reward_to_go: bool = _knob(False, "reinforce: step i's presence decision is scored only with "
                               "the ELBO terms from step i on (unbiased, lower variance)")
    reinforce_warmup_end: float = _knob(0.0, "reinforce: fraction of train.steps over which "
                                        "the REINFORCE term's weight rises linearly from 0 to 1 "
                                        "(0: full weight at once)", low=0.0, high=1.0)
    particles: int = _knob(1, "samples per image, repeated along the batch (vimco: the bound's "
                           "S, >= 2)", low=1, high=64)
    temperature_initial: float = _knob(1.0, "relaxed: Concrete temperature at step 0", low=0.0,
                                       high=100.0, low_open=True)
    temperature_final: float = _knob(0.1, "relaxed: temperature after the decay (lower: less "
                                     "bias, more variance)", low=0.0, high=100.0, low_open=True)
    temperature_end: float = _knob(1.0, "relaxed: fraction of train.steps over which the "
                                   "temperature falls geometrically from the initial to the "
                                   "final value", low=0.0, high=1.0, low_open=True)


@dataclass
class TrainConfig:
    optimizer: str = _knob("adam", "optimiser of model and baseline", choices=("adam", "rmsprop"))
    lr: float = _knob(3e-4, "model learning rate", low=0.0, high=1.0, low_open=True)
    baseline_lr: float = _knob(3e-3, "baseline learning rate (reference: 10x the model's)",
                               low=0.0, high=10.0, low_open=True)
    batch_size: int = _knob(64, "images per step and replica", low=1, high=65536)
    grad_clip: float = _knob(1000.0, "per-replica gradient-norm clip of the model (0: off); the "
                             "typical norms of the default recipe are in docs/recipe.md",
                             low=0.0)
    lr_schedule: str = _knob("cosine", "decay of both learning rates (model and baseline, "
                             "ratio kept) from 1 to train.lr_final between the fractions "
                             "train.lr_decay_start and train.lr_decay_end of train.steps: "
                             "constant (no decay), linear or cosine; the decay steadies the "
                             "end of a run, where a seed is judged",
                             choices=("constant", "linear", "cosine"))
    lr_decay_start: float = _knob(0.6, "fraction of train.steps trained at the full learning "
                                  "rates before the decay begins", low=0.0, high=1.0)
    lr_decay_end: float = _knob(1.0, "fraction of train.steps at which the learning rates reach "
                                "train.lr_final", low=0.0, high=1.0)
    lr_final: float = _knob(0.1, "learning-rate multiplier once the decay is over", low=0.0,
                            high=1.0)
    steps: int = _knob(10000, "training steps", low=1, high=100_000_000)
    eval_every: int = _knob(500, "steps between held-out evaluations", low=1)


@dataclass
class EvalConfig:
    threshold: float = _knob(0.95, "held-out count accuracy a seed needs to count as converged",
                             low=0.0, high=1.0)
    hold: int = _knob(1, "consecutive final evaluations that must all reach the threshold",
                      low=1)
    beyond_digits: int = _knob(0, "also evaluate on held-out images of exactly this many "
                               "digits (0: off), e.g. 3 after training on 0-2: does AIR count "
                               "past its training range? Logged as eval/accuracy_count_<n>; "
                               "needs model.max_steps >= it", low=0, high=10)
    verdicts: bool = _knob(True, "stop training a seed once its outcome is decided, so it "
                           "leaves the batch and frees its compute (a diverged seed at once; "
                           "eval.decide_converged, eval.decide_collapsed); false: every seed "
                           "trains train.steps. A stopped seed is judged at its last "
                           "evaluation and misses the end-of-run learning-rate decay")
    decide_converged: int = _knob(3, "consecutive evaluations at >= eval.threshold that decide a "
                                  "seed converged (>= eval.hold)", low=1)
    decide_collapsed: int = _knob(0, "consecutive evaluations with >= 90% of held-out images "
                                  "read as 0 (or as model.max_steps) objects that decide a seed "
                                  "collapsed; 0: never (seeds read as 0 objects for three "
                                  "evaluations have gone on to converge)", low=0)
    gradient_variance_every: int = _knob(0, "steps between logging diag/grad_var_backprop and "
                                         "diag/grad_var_score (checked at evaluations; 0: off)",
                                         low=0)


@dataclass
class AIRConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    prior: PriorConfig = field(default_factory=PriorConfig)
    init: InitConfig = field(default_factory=InitConfig)
    estimator: EstimatorConfig = field(default_factory=EstimatorConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def where_scale_prior(self) -> tuple[float, float]:
        """Mean and sd of the inverse-scale prior, after prior.where_scale_rule."""
        p = self.prior
        if p.where_scale_rule == "fixed":
            return p.where_scale_loc, p.where_scale_sd
        d = self.data
        factor = lambda size: (REFERENCE_DIGIT_SIZE / size) * (  # noqa: E731
            d.canvas_size / REFERENCE_CANVAS_SIZE)
        if d.digit_size_max == 0:
            return p.where_scale_loc * factor(d.digit_size), p.where_scale_sd * factor(d.digit_size)
        # A range of sizes: the prior's mean halfway between the smallest and the largest
        # digit's inverse scale, both prior.where_scale_range_sds sd from it (or the one-size
        # sd, if wider).
        small, large = p.where_scale_loc * factor(d.digit_size), p.where_scale_loc * factor(
            d.digit_size_max)
        middle = (d.digit_size * d.digit_size_max) ** 0.5
        return (small + large) / 2, max(p.where_scale_sd * factor(middle),
                                        (small - large) / 2 / p.where_scale_range_sds)

    def where_scale_for(self, digit_px: float) -> float:
        """Inverse scale that frames a digit of side digit_px as prior.where_scale_loc frames a
        21 px digit on a 50 px canvas."""
        return self.prior.where_scale_loc * (REFERENCE_DIGIT_SIZE / digit_px) * (
            self.data.canvas_size / REFERENCE_CANVAS_SIZE)

    def where_proposal(self) -> str:
        """model.where_proposal after its auto rule: windows framed on the ink where sizes vary
        or digits may overlap (where the densest patch of two crossing digits is their seam)."""
        m, d = self.model, self.data
        if m.where_proposal != "auto":
            return m.where_proposal
        low, high = d.digit_size_range()
        return "residual_object" if high > low or d.overlap != "avoid" else "residual_peak"

    def proposal_mask(self) -> str:
        """model.proposal_mask after its auto rule: earlier windows are left out where windows
        frame the ink and digits never overlap, so a window cannot hold the start of another
        digit. Fixed sizes (residual_peak) keep none: their answers ran without it."""
        m, d = self.model, self.data
        if m.proposal_mask != "auto":
            return m.proposal_mask
        framed = self.where_proposal() == "residual_object"
        return "earlier_windows" if framed and d.overlap == "avoid" else "none"

    def likelihood_sd(self) -> float:
        """model.likelihood_sd after its auto rule: 0.3 where digits may overlap, else 0.15."""
        if self.model.likelihood_sd:
            return self.model.likelihood_sd
        return DEFAULT_LIKELIHOOD_SD if self.data.overlap == "avoid" else OVERLAP_LIKELIHOOD_SD

    def saturates(self) -> bool:
        """Whether the canvas is clipped at full ink, after model.composition."""
        if self.model.composition == "auto":
            return self.data.overlap == "allow"
        return self.model.composition == "saturate"

    def check_effective(self, keys: Any) -> None:
        """Refuse a key the user set that does nothing under this config (a decay's final
        value under a constant schedule, ...), naming the setting that would enable it."""
        for key in keys:
            for prefix, (enabled, needs) in _ENABLED_BY.items():
                if key.startswith(prefix) and key not in _ALWAYS and not enabled(self):
                    raise ConfigError(f"{key} has no effect here: it needs {needs}")

    def label(self) -> str:
        """What this config changes from the defaults, short (figure titles): the last part
        of each changed key with its value; how long it trains is left out."""
        defaults = AIRConfig().to_flat()
        changed = [f"{key.rsplit('.', 1)[-1]}={value:g}" if isinstance(value, float)
                   else f"{key.rsplit('.', 1)[-1]}={value}"
                   for key, value in self.to_flat().items()
                   if value != defaults[key] and key not in RUN_LENGTH_KEYS]
        return ", ".join(changed) or "default recipe"

    def to_flat(self) -> dict[str, Any]:
        """All knobs as {dotted key: value}."""
        return {key: _get(self, key) for key in knob_specs()}

    @classmethod
    def from_flat(cls, flat: dict[str, Any], base: AIRConfig | None = None) -> AIRConfig:
        """A validated config: `base` (or the defaults) with `flat` overrides applied."""
        config = copy.deepcopy(base) if base is not None else cls()
        specs = knob_specs()
        for key, raw in flat.items():
            if key not in specs:
                raise ConfigError(unknown_key_message(key))
            _set(config, key, coerce(key, raw))
        config.validate()
        return config

    def validate(self) -> None:
        for key, spec in knob_specs().items():
            check_value(key, _get(self, key), spec)
        if self.data.min_digits > self.data.max_digits:
            raise ConfigError(f"data.min_digits ({self.data.min_digits}) must be <= "
                              f"data.max_digits ({self.data.max_digits})")
        if self.data.max_digits > self.model.max_steps:
            raise ConfigError(f"data.max_digits ({self.data.max_digits}) must be <= "
                              f"model.max_steps ({self.model.max_steps}): AIR cannot count past "
                              "its steps")
        check_digit_sizes(self.data)
        if self.estimator.kind == "vimco" and self.estimator.particles < 2:
            raise ConfigError(f"estimator.particles ({self.estimator.particles}) must be >= 2 "
                              "with estimator.kind=vimco: its control variate leaves one "
                              "particle out")
        if self.model.likelihood_sd_start >= self.model.likelihood_sd_end:
            raise ConfigError(f"model.likelihood_sd_start ({self.model.likelihood_sd_start}) "
                              f"must be < model.likelihood_sd_end ({self.model.likelihood_sd_end})")
        if self.eval.beyond_digits > self.model.max_steps:
            raise ConfigError(f"eval.beyond_digits ({self.eval.beyond_digits}) must be <= "
                              f"model.max_steps ({self.model.max_steps}): AIR cannot count "
                              "past its steps")
        if 0 < self.eval.beyond_digits <= self.data.max_digits:
            raise ConfigError(f"eval.beyond_digits ({self.eval.beyond_digits}) must be > "
                              f"data.max_digits ({self.data.max_digits}), or 0 (off): the "
                              "held-out set already has those counts")
        if self.eval.decide_converged < self.eval.hold:
            raise ConfigError(f"eval.decide_converged ({self.eval.decide_converged}) must be >= "
                              f"eval.hold ({self.eval.hold}): a seed decided converged must "
                              "meet the convergence rule")
        z_pres = self.prior.z_pres
        if z_pres.schedule != "constant" and z_pres.decay_start >= z_pres.decay_end:
            raise ConfigError(f"prior.z_pres.decay_start ({z_pres.decay_start}) must be < "
                              f"prior.z_pres.decay_end ({z_pres.decay_end})")
        if self.train.lr_decay_start >= self.train.lr_decay_end:
            raise ConfigError(f"train.lr_decay_start ({self.train.lr_decay_start}) must be < "
                              f"train.lr_decay_end ({self.train.lr_decay_end})")


# Keys (by prefix) that act only under another setting, and that setting in words.
_ENABLED_BY: dict[str, tuple[Any, str]] = {
    "prior.z_pres.final": (lambda c: c.prior.z_pres.schedule != "constant",
                           "prior.z_pres.schedule linear, exponential or logit"),
    "prior.z_pres.decay_": (lambda c: c.prior.z_pres.schedule != "constant",
                            "prior.z_pres.schedule linear, exponential or logit"),
    "estimator.temperature_": (lambda c: c.estimator.kind == "relaxed",
                               "estimator.kind=relaxed"),
    "model.likelihood_sd_": (lambda c: c.model.likelihood_sd_final != 0,
                             "model.likelihood_sd_final > 0"),
    "model.blur_until": (lambda c: c.model.blur_px > 0, "model.blur_px > 0"),
    "prior.where_scale_range_sds": (lambda c: c.data.digit_size_max > 0
                                    and c.prior.where_scale_rule == "digit_size",
                                    "data.digit_size_max > 0 and "
                                    "prior.where_scale_rule=digit_size"),
    "model.proposal_mask": (lambda c: c.where_proposal() != "none",
                            "model.where_proposal other than none"),
    "train.lr_": (lambda c: c.train.lr_schedule != "constant",
                  "train.lr_schedule linear or cosine"),
    "init.": (lambda c: c.init.scheme == "air", "init.scheme=air (pytorch ignores the "
              "output-layer settings)"),
    "eval.decide_": (lambda c: c.eval.verdicts, "eval.verdicts=true"),
}
_ALWAYS = ("model.likelihood_sd_final", "train.lr_schedule", "init.scheme")


@dataclass(frozen=True)
class KnobSpec:
    """Type and allowed values of one dotted key."""

    key: str
    type: type
    default: Any
    help: str
    choices: tuple | None
    low: float | None
    high: float | None
    low_open: bool
    high_open: bool

    def allowed(self) -> str:
        if self.choices:
            return "one of " + ", ".join(map(str, self.choices))
        if self.low is None and self.high is None:
            return f"any {self.type.__name__}"
        lo = "(" if self.low_open else "["
        hi = ")" if self.high_open else "]"
        low = "-inf" if self.low is None else self.low
        high = "inf" if self.high is None else self.high
        return f"{self.type.__name__} in {lo}{low}, {high}{hi}"


def knob_specs() -> dict[str, KnobSpec]:
    """Every dotted key of AIRConfig with its type, default and allowed values."""
    specs: dict[str, KnobSpec] = {}

    def walk(cls: type, prefix: str) -> None:
        for f in dataclasses.fields(cls):
            key = prefix + f.name
            if f.default_factory is not dataclasses.MISSING:  # a nested section
                walk(type(f.default_factory()), key + ".")
                continue
            kind = {"int": int, "float": float, "str": str, "bool": bool}[str(f.type)]
            m = f.metadata
            specs[key] = KnobSpec(key, kind, f.default, m["help"], m["choices"], m["low"],
                                  m["high"], m["low_open"], m["high_open"])

    walk(AIRConfig, "")
    return specs


def unknown_key_message(key: str) -> str:
    """Name the bad key and the closest known ones (all keys: `train --list-keys`)."""
    if key in RENAMED:
        return (f"{key} counted training steps and is gone: use {RENAMED[key]}, a fraction of "
                "train.steps (every step-dependent knob is set in fractions of the run; e.g. "
                "1,000 of 10,000 steps -> 0.1)")
    specs = knob_specs()
    close = difflib.get_close_matches(key, specs, n=3, cutoff=0.6)
    section = key.rsplit(".", 1)[0] + "."
    siblings = [k for k in specs if k.startswith(section) and k.count(".") == key.count(".")]
    hint = f"did you mean {' or '.join(close)}?" if close else ""
    if siblings:
        hint += f" keys of {section[:-1]}: {', '.join(k[len(section):] for k in siblings)}"
    return (f"unknown config key {key!r}; {hint.strip() or 'allowed keys'}"
            f"{'' if siblings or close else ': see `python cli.py train --list-keys`'}")


def coerce(key: str, raw: Any) -> Any:
    """Turn a CLI/YAML value into the key's type, or raise naming the key."""
    spec = knob_specs().get(key)
    if spec is None:
        raise ConfigError(unknown_key_message(key))
    try:
        if spec.type is bool:
            if isinstance(raw, str):
                if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                return raw.lower() in ("true", "1", "yes")
            if isinstance(raw, bool) or (isinstance(raw, int) and raw in (0, 1)):
                return bool(raw)
            raise ValueError
        if spec.type is int:
            if isinstance(raw, float) and not raw.is_integer():
                raise ValueError
            if isinstance(raw, bool):
                raise ValueError
            value = float(raw) if isinstance(raw, str) else raw
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if spec.type is float:
            if isinstance(raw, bool):
                raise ValueError
            return float(raw)
        return str(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: {raw!r} is not a valid {spec.type.__name__}; "
                          f"allowed: {spec.allowed()}") from None


def check_value(key: str, value: Any, spec: KnobSpec | None = None) -> None:
    spec = spec or knob_specs()[key]
    bad = False
    if spec.choices is not None:
        bad = value not in spec.choices
    elif spec.type in (int, float):
        if isinstance(value, float) and not math.isfinite(value):
            bad = True
        if spec.low is not None and (value < spec.low or (spec.low_open and value == spec.low)):
            bad = True
        if spec.high is not None and (value > spec.high or (spec.high_open and value == spec.high)):
            bad = True
    if bad:
        raise ConfigError(f"{key}: {value!r} is not allowed; allowed: {spec.allowed()}")


def parse_assignments(assignments: list[str] | tuple[str, ...]) -> dict[str, str]:
    """Parse CLI `key=value` pairs."""
    out = {}
    for item in assignments:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def _get(config: Any, key: str) -> Any:
    for part in key.split("."):
        config = getattr(config, part)
    return config


def _set(config: Any, key: str, value: Any) -> None:
    *parents, last = key.split(".")
    for part in parents:
        config = getattr(config, part)
    setattr(config, last, value)


def check_digit_sizes(data: DataConfig) -> None:
    """Digit sizes that can be drawn: within the canvas, one way of varying them at a time."""
    if data.digit_size * (1 + data.digit_size_jitter) > data.canvas_size:
        raise ConfigError("data.digit_size (with jitter) must fit in data.canvas_size")
    if data.digit_size_max == 0:
        return
    if data.digit_size_jitter > 0:
        raise ConfigError("data.digit_size_jitter and data.digit_size_max both vary the digit "
                          "size: set one (data.digit_size_jitter=0 for a range)")
    if not data.digit_size < data.digit_size_max <= data.canvas_size:
        raise ConfigError(f"data.digit_size_max ({data.digit_size_max:g}) must be > "
                          f"data.digit_size ({data.digit_size:g}) and <= data.canvas_size "
                          f"({data.canvas_size}), or 0 (one size)")
