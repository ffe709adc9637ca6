"""``IAUConfig``: TrainingArguments plus gradient restriction (GR) and the IAU unlearning update."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping, get_args, get_type_hints

from transformers import TrainingArguments


@dataclass(repr=False)  # keep TrainingArguments.__repr__, which redacts tokens
class IAUConfig(TrainingArguments):
    r"""
    Configuration for [`IAUTrainer`]: every `TrainingArguments` field plus the fields below.

    > Gradient restriction (training time): loss ℓ + α‖∇θℓ‖

        gr_alpha (`float`, defaults to `0.0`): α; 0 turns GR off, the paper uses 0.005.
        gr_mode (`str`, defaults to `"finite_difference"`): `"finite_difference"` (two forward/backward
            passes, any attention kernel) or `"exact"` (double backward).
        gr_norm (`str`, defaults to `"global"`): `"global"` ‖g‖₂ over all trainable parameters, or
            `"per_tensor"` Σₜ‖gₜ‖₂ (the authors' code).
        gr_fd_radius (`float`, defaults to `1e-3`): perturbation radius r of the finite difference (float32);
            under bf16/fp16 the difference is central and r is calibrated from ‖g‖/‖H·u‖.
        gr_every_n_steps (`int`, defaults to `1`): GR penalty on every n-th optimizer step only.
        gr_sub_batch_fraction (`float`, defaults to `1.0`): rows of the micro-batch used for H·u.
        gr_reuse_penalty (`bool`, defaults to `False`): reuse the last penalty gradient in between.

    > Unlearning (``IAUTrainer.unlearn``): steps on w_r·mean ℓ(D_r) − w_f·mean ℓ(D_f)

        unlearn_optimizer, unlearn_learning_rate, unlearn_steps, unlearn_forget_weight,
        unlearn_retain_weight, unlearn_retain_sample_size, unlearn_targets, unlearn_stop, ... (see each
        field's help). Every unlearning field starts with `unlearn_`.

    Defaults: up to 20 Adam steps (lr: half the training learning rate) with the gradient recomputed, a seeded
    32-example retain sample per step weighted `unlearn_retain_weight=4`, per-example counterfactual forget targets
    and a stop once ≤ 5% of the forget rows are short of their target (benchmarks/results/removal.md).

    Reference parity (the authors' update): `unlearn_optimizer="adam"`, `unlearn_steps=1`,
    `unlearn_forget_weight=unlearn_retain_weight=1.0`, `unlearn_retain_sample_size=None`, `unlearn_targets="none"`,
    `unlearn_stop="fixed"`.

    Deprecated aliases (kept one release, with a FutureWarning): `forget_weight`, `retain_weight`,
    `retain_sample_size`, `forget_saturation` ("auto"/"loss"), `reference_sample_size`, `unlearn_stop="auto"`;
    `unlearn_stop_patience` is ignored.
    """

    # --- gradient restriction -------------------------------------------------------------
    gr_alpha: float = field(
        default=0.0,
        metadata={"help": "Gradient-restriction weight α in ℓ + α‖∇θℓ‖ (0 = off; the paper uses 0.005)."},
    )
    gr_mode: Literal["finite_difference", "exact"] = field(
        default="finite_difference",
        metadata={
            "help": "How the GR gradient is computed: 'finite_difference' (two forward/backward passes, works "
            "with any attention) or 'exact' (double backward; SDPA runs under its MATH backend)."
        },
    )
    gr_norm: Literal["global", "per_tensor"] = field(
        default="global",
        metadata={
            "help": "GR norm: 'global' (‖g‖₂ over all trainable parameters) or 'per_tensor' (sum of "
            "per-tensor norms, as in the authors' code)."
        },
    )
    gr_fd_radius: float = field(
        default=1e-3,
        metadata={
            "help": "Finite-difference radius r: the weights move by r along the normalised gradient. Under bf16/fp16 "
            "(mixed precision or weights) the difference is central and r = 0.08·‖g‖/‖H·u‖, measured on the "
            "first GR step (starting from this value) and kept (benchmarks/results/gr_precision.md)."
        },
    )
    gr_every_n_steps: int = field(
        default=1,
        metadata={
            "help": "Compute the GR penalty gradient on every n-th optimizer step only (1 = every step); other "
            "steps are plain steps, or reuse the last penalty gradient when `gr_reuse_penalty`."
        },
    )
    gr_sub_batch_fraction: float = field(
        default=1.0,
        metadata={
            "help": "Fraction of each micro-batch's rows on which the finite-difference H·u is estimated (1.0 = "
            "all): a step costs 1 + fraction forward/backward passes instead of 2. Finite difference only."
        },
    )
    gr_reuse_penalty: bool = field(
        default=False,
        metadata={
            "help": "With gr_every_n_steps > 1: add the last computed penalty gradient α·H·u on the steps in "
            "between (one extra gradient-sized buffer) instead of taking plain steps."
        },
    )
    # --- unlearning ------------------------------------------------------------------------
    unlearn_optimizer: Literal["adam", "sgd"] = field(
        default="adam",
        metadata={"help": "Optimizer of the unlearning update, created fresh for each request: 'adam' or 'sgd'."},
    )
    unlearn_learning_rate: float | None = field(
        default=None,
        metadata={
            "help": "Learning rate of the unlearning optimizer (the paper: 1e-3 with Adam). None (default): half the "
            "training `learning_rate`, resolved when the config is created — a step on the scale the model was "
            "trained with (1e-3 broke a fine-tuned MiniLM in one step)."
        },
    )
    unlearn_steps: int = field(
        default=20,
        metadata={
            "help": "Number of unlearning steps (gradients recomputed at each step); the maximum when "
            "unlearn_stop='targets'."
        },
    )
    unlearn_forget_weight: float = field(
        default=1.0, metadata={"help": "Weight w_f of the ascent term on the forget set."}
    )
    unlearn_retain_weight: float = field(
        default=4.0,
        metadata={
            "help": "Weight w_r of the descent (gradient-correction) term on retained data (reference parity: 1.0). "
            "4.0 was chosen on the tuning scenarios of benchmarks/results/removal.md (mislabelled, poison_vision, "
            "topic_lm): the ascent costs utility, and w_r = 1 lost test accuracy the retrained model keeps."
        },
    )
    unlearn_retain_sample_size: int | None = field(
        default=32,
        metadata={
            "help": "Retained examples per step: None uses the whole retain set; an int draws a sample per step, "
            "seeded by (`unlearn_seed` or `seed`, the request index, the step): the same on every process and machine."
        },
    )
    unlearn_targets: Literal["counterfactual", "held_out_quantile", "flip", "none"] = field(
        default="counterfactual",
        metadata={
            "help": "Which forget rows the ascent pushes at each step: 'counterfactual' (default: rows whose loss is "
            "short of their own target, their estimated loss under the model retrained without the forget set, "
            "hf_iau/counterfactual.py), 'held_out_quantile' (short of their rank-matched quantile of the held-out "
            "losses), 'flip' (still predicted correctly), 'none' (every row, reference parity). A row within 1 "
            "percent of its target counts as forgotten; one that falls back is pushed again. The first two need "
            "held-out data (`eval_dataset` or `held_out_dataset=`)."
        },
    )
    unlearn_target_sample_size: int = field(
        default=256,
        metadata={
            "help": "Retained rows whose estimated removal calibrates the counterfactual targets against the held-out "
            "losses (a seeded sample; min with the retain size). 256 measured stable over sample seeds where 32 and "
            "64 were not (benchmarks/results/curvature.md)."
        },
    )
    unlearn_target_group_column: str | None = field(
        default=None,
        metadata={
            "help": "Counterfactual targets: a retain-set column naming the entity each row belongs to (e.g. "
            "'author'). The calibration sample is then drawn as whole entities in a seeded order (until "
            "`unlearn_target_sample_size` rows), so its removal looks like a request that deletes whole entities; "
            "None draws single rows, whose information is their own. Only the grouping is used; no value is stored. "
            "Each drawn entity is removed as its own calibration group. Off by default: on topic_lm it improved the "
            "validation gap by about the retrain floor, and on the LLM benchmark's tuning authors it lowered one "
            "seed's retain probability (benchmarks/results/target_group_decision.md)."
        },
    )
    unlearn_stop: Literal["fixed", "targets", "mean_target"] = field(
        default="targets",
        metadata={
            "help": "'fixed' runs `unlearn_steps` steps; 'targets' stops once at most `unlearn_stop_tolerance` of the "
            "forget rows are short of their target (within 1 percent), else after `unlearn_steps` steps; 'mean_target' "
            "also stops once the forget set's mean loss is within 1 percent of its mean target (the set has landed "
            "on the estimate; further steps push some rows past theirs). 'targets' is the default: 'mean_target' stops "
            "mislabelled rows early (tune block 0.060 -> 0.238; benchmarks/results/mean_target_stop_decision.md)."
        },
    )
    unlearn_curvature: Literal["diagonal", "kfac", "training"] = field(
        default="diagonal",
        metadata={
            "help": "Curvature of the counterfactual estimate (targets and influence step): 'diagonal' Fisher from "
            "per-example gradients of the request's rows (or one an earlier request measured so, kept with the "
            "weights); 'training' — the diagonal Fisher IAUTrainer.train() saved from its mini-batch gradients, "
            "when present (plain instead of hooked passes over the request's rows; else as 'diagonal'): cheaper, but worse on the tuning scenarios "
            "(mislabelled 0.060 -> 0.087 mini-batch, 0.070 per-example; benchmarks/results/"
            "saved_curvature_decision.md); 'kfac' — Kronecker "
            "factors of every Linear / Conv1D / Conv2d weight measured on the request's rows in the same passes, "
            "trace-matched to the diagonal (hf_iau/kfac.py); sharded (FSDP2) models keep the diagonal."
        },
    )
    unlearn_leverage: bool = field(
        default=False,
        metadata={
            "help": "Counterfactual targets, diagonal curvature: precondition each removed set (the forget set and each "
            "calibration group) by the curvature of the data that remains, (F̂ − Σ_set g² + d)⁻¹ — the Newton step to "
            "the model retrained without it. Rows only the set constrains (memorised, mislabelled) then move further "
            "than under the full F̂. Costs hooked instead of plain passes over the calibration groups "
            "(hf_iau/counterfactual.py: leave_out)."
        },
    )
    train_curvature: Literal["batch", "per_example"] = field(
        default="batch",
        metadata={
            "help": "The curvature train() saves for later requests (hf_iau/curvature.py): 'batch' — n·B·mean ḡ² from "
            "the last epoch's optimizer-step gradients (free; requests use it only with "
            "unlearn_curvature='training'); 'per_example' — Σ_i (∇ℓ_i)² from hooks on the last epoch's own backward "
            "passes, the estimator requests measure on their rows (1-6% more training time on the tuning scenarios; "
            "GR steps keep 'batch'; models whose position ids are shared by the batch get them expanded, so their "
            "gradient is summed in another order and the weights may differ from 'batch' training by rounding). "
            "Requests use either only with unlearn_curvature='training': both cost fidelity on the tuning scenarios "
            "(benchmarks/results/saved_curvature_decision.md)."
        },
    )
    unlearn_influence_step: float = field(
        default=0.5,
        metadata={
            "help": "Fraction λ of the estimated removal step θ ← θ + c·P·G_F (the counterfactual targets' own "
            "preconditioned forget gradient and calibrated scale, hf_iau/counterfactual.py) taken before the steps, "
            "unless the targets already hold, halved (at most 3 times, then dropped) while it leaves the retain sample's mean "
            "loss above the held-out loss; 0 takes none. Costs no gradient pass; only with unlearn_targets='counterfactual'. "
            "0.5 was chosen on the tuning scenarios (benchmarks/results/influence_step_decision.md): the full step "
            "lands the forget losses on their targets but breaks the retain loss (diagonal curvature)."
        },
    )
    unlearn_influence_curvature: Literal["estimate", "kfac"] = field(
        default="estimate",
        metadata={
            "help": "Curvature P of the influence step (unlearn_influence_step): 'estimate' — the targets' own "
            "(unlearn_curvature); 'kfac' — Kronecker factors measured in the estimate's own hooked passes, the step's "
            "scale c calibrated on the same removed groups (2 more forward passes per calibration row), the targets "
            "unchanged. Not with unlearn_leverage."
        },
    )
    unlearn_flipped_targets: bool = field(
        default=False,
        metadata={
            "help": "Classifiers, counterfactual targets: a forget row whose estimated class is not its label is held "
            "at least to what its label costs on held-out rows the model predicts as that class (one more forward pass "
            "over the held-out sample). Off by default: it lands mislabelled rows' forget loss on the retrained "
            "models' (tune block: gap 0.060 -> 0.051) but made two held-out kinds worse "
            "(benchmarks/results/flipped_targets_decision.md)."
        },
    )
    unlearn_neighbour_targets: bool = field(
        default=False,
        metadata={
            "help": "Classifiers: a forget row whose 10 nearest held-out rows (input embedding) are mostly predicted as "
            "another class is held at least to its label's cost on them. Off: land_neighbour_decision.md."
        },
    )
    unlearn_land: bool = field(
        default=False,
        metadata={
            "help": "Loss targets: rows past their target (by > 1%) are pulled back while rows short of it are pushed, "
            "and the stop counts both. Off: benchmarks/results/land_neighbour_decision.md."
        },
    )
    unlearn_follow_held_out: bool = field(
        default=True,
        metadata={
            "help": "Loss targets: every step re-measures the mean loss of 32 seeded held-out rows and moves every "
            "target by its change since the request began, so the targets stay relative to the model's own "
            "held-out losses. Default since: tune block mislabelled test gap 0.071 -> 0.059; held-out privacy 0.137 -> 0.057 and "
            "outlier_vision 0.141 -> 0.116, lora_text 0.131 -> 0.157 worse (tracking_targets_decision.md)."
        },
    )
    unlearn_retain_restore: bool = field(
        default=False,
        metadata={
            "help": "The descent term on retained data pushes only the sampled rows whose loss rose above their loss "
            "before the request (one forward pass over the rows the steps will sample, before any change): it "
            "restores what the ascent broke and does not fine-tune the retained rows further. Off by default: tune "
            "block mislabelled 0.060 -> 0.051, but held-out qa_lm 0.037 -> 0.054 (benchmarks/results/retain_restore_decision.md)."
        },
    )
    unlearn_retain_label_share: float = field(
        default=0.0,
        metadata={
            "help": "Single-label classifiers: the share of each step's retain sample drawn from retained rows that "
            "carry a forget row's label (each slot takes the label of a forget row drawn at random; the rest is drawn "
            "uniformly). The ascent lowers the forget labels' logits everywhere, so the correction is sampled where "
            "that damage falls. 0 (default): a uniform sample; ignored for language models and when no retained row "
            "carries a forget label. Off on its evidence: tune block poison_vision 0.030 -> 0.023 (s = 1), but held-out "
            "poison_text, privacy and outlier_vision worse (benchmarks/results/label_share_decision.md)."
        },
    )
    unlearn_stop_tolerance: float = field(
        default=0.05,
        metadata={"help": "unlearn_stop='targets' stops once at most this fraction of the forget rows is off its target (short; with unlearn_land, or past)."},
    )
    unlearn_held_out_sample_size: int = field(
        default=512,
        metadata={"help": "Held-out rows whose losses set the 'never seen' level of the targets (a seeded sample)."},
    )
    unlearn_batch_size: int | None = field(
        default=None,
        metadata={"help": "Batch size of unlearning passes (default: per_device_eval_batch_size)."},
    )
    unlearn_seed: int | None = field(
        default=None,
        metadata={"help": "Seed of every random choice of a request (retain samples, orders; default: `seed`)."},
    )
    unlearn_max_retain_loss_rise: float | None = field(
        default=None,
        metadata={
            "help": "Runaway guard: after a step, if the retain loss on that step's retain data is non-finite or "
            "rose by more than this (nats), undo the step, shrink the step size and retry. None: only non-finite "
            "losses are caught."
        },
    )
    unlearn_guard_retries: int = field(
        default=3, metadata={"help": "Retries of the runaway guard before unlearning stops with an error."}
    )
    unlearn_guard_shrink: float = field(
        default=0.5, metadata={"help": "Factor applied to the step size on each guard retry."}
    )
    id_column: str = field(
        default="id",
        metadata={"help": "Column that identifies training rows (for retain = train − forget, overlap checks)."},
    )
    fingerprint_key_file: str | None = field(
        default=None,
        metadata={"help": "Secret key of the keyed (HMAC-SHA256) forget-set fingerprints and deletion record; None: "
                  "$HF_IAU_KEY_FILE or ~/.cache/hf_iau/fingerprint.key, created (0600) on first use. Never saved "
                  "with the model: keep it to prove which ids a fingerprint names and to unlearn again with retain=None."},
    )
    model_init_kwargs: dict[str, Any] | str | None = field(
        default=None,
        metadata={"help": "Keyword arguments for `from_pretrained` when `model` is given as a string."},
    )
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow custom modelling code from the Hub when loading by name."}
    )

    # --- deprecated aliases (one release) -------------------------------------------------------
    forget_weight: float | None = field(default=None, metadata={"help": "Deprecated: use unlearn_forget_weight."})
    retain_weight: float | None = field(default=None, metadata={"help": "Deprecated: use unlearn_retain_weight."})
    retain_sample_size: int | None = field(default=None, metadata={"help": "Deprecated: use unlearn_retain_sample_size."})
    forget_saturation: str | None = field(
        default=None,
        metadata={"help": "Deprecated: use unlearn_targets ('auto' is 'counterfactual', 'loss' is 'held_out_quantile')."},
    )
    reference_sample_size: int | None = field(
        default=None, metadata={"help": "Deprecated: use unlearn_held_out_sample_size."}
    )
    unlearn_stop_patience: int | None = field(
        default=None, metadata={"help": "Deprecated and ignored: the stop follows the targets, never a stall count."}
    )

    def __post_init__(self) -> None:
        self._resolve_aliases()
        if self.unlearn_learning_rate is None and _finite(self.learning_rate) and self.learning_rate > 0:
            self.unlearn_learning_rate = 0.5 * float(self.learning_rate)
        check_fields({f: getattr(self, f) for f in RULES}, "IAUConfig")
        super().__post_init__()
        self._aliases_ready = True

    def _resolve_aliases(self) -> None:
        if self.unlearn_stop == "auto":
            _deprecated("unlearn_stop='auto'", "unlearn_stop='targets'")
            self.unlearn_stop = "targets"
        if self.unlearn_stop_patience is not None:
            _deprecated("unlearn_stop_patience", "nothing (it is ignored: the stop follows the targets)")
        for old, (new, to_new, _) in ALIASES.items():
            value = getattr(self, old)
            if value is not None:
                _deprecated(old, new)
                object.__setattr__(self, new, to_new(value))
            object.__setattr__(self, old, ALIASES[old][2](getattr(self, new)))

    def __setattr__(self, name: str, value: Any) -> None:
        """Keep a deprecated alias and its new field equal when either is set after construction."""
        super().__setattr__(name, value)
        if not self.__dict__.get("_aliases_ready"):
            return
        if name in ALIASES and value is not None:
            new, to_new, _ = ALIASES[name]
            _deprecated(name, new, stacklevel=3)
            super().__setattr__(new, to_new(value))
        elif name in NEW_TO_OLD:
            old = NEW_TO_OLD[name]
            super().__setattr__(old, ALIASES[old][2](value))

    def to_dict(self) -> dict[str, Any]:
        """``TrainingArguments.to_dict`` without the deprecated aliases (saved configs use the new names)."""
        out = super().to_dict()
        for old in (*ALIASES, "unlearn_stop_patience"):
            out.pop(old, None)
        out.pop("_aliases_ready", None)
        return out

    def unlearning_options(self) -> dict[str, Any]:
        """The fields that define an unlearning update (methods take them as options; cards and ledgers record them)."""
        return {name: getattr(self, name) for name in UNLEARNING_FIELDS}


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _int(x: Any, low: int) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= low


def _choices(name: str) -> tuple[str, ...]:
    return get_args(get_type_hints(IAUConfig)[name])


def _deprecated(old: str, new: str, stacklevel: int = 5) -> None:
    warnings.warn(f"IAUConfig.{old} is deprecated and will be removed in the next release; use {new}.",
                  FutureWarning, stacklevel=stacklevel)


_TARGETS_OLD = {"auto": "counterfactual", "loss": "held_out_quantile"}
_TARGETS_NEW = {v: k for k, v in _TARGETS_OLD.items()}
ALIASES: dict[str, tuple[str, Callable[[Any], Any], Callable[[Any], Any]]] = {
    # old name: (new name, old value -> new value, new value -> old value)
    "forget_weight": ("unlearn_forget_weight", lambda v: v, lambda v: v),
    "retain_weight": ("unlearn_retain_weight", lambda v: v, lambda v: v),
    "retain_sample_size": ("unlearn_retain_sample_size", lambda v: v, lambda v: v),
    "forget_saturation": ("unlearn_targets", lambda v: _TARGETS_OLD.get(v, v), lambda v: _TARGETS_NEW.get(v, v)),
    "reference_sample_size": ("unlearn_held_out_sample_size", lambda v: v, lambda v: v),
}
NEW_TO_OLD = {new: old for old, (new, _, _) in ALIASES.items()}

# Validation table: field -> (valid?, how to fix). Choices come from each field's Literal type.
RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "gr_alpha": (lambda v: _finite(v) and v >= 0, "use a finite value >= 0 (0 = off, paper: 0.005)."),
    "gr_mode": (lambda v: v in _choices("gr_mode"), "use one of {choices}."),
    "gr_norm": (lambda v: v in _choices("gr_norm"), "use one of {choices}."),
    "gr_fd_radius": (lambda v: _finite(v) and v > 0, "use a finite value > 0 (e.g. 1e-3)."),
    "gr_every_n_steps": (lambda v: _int(v, 1), "use an integer >= 1 (1 = GR on every step)."),
    "gr_sub_batch_fraction": (lambda v: _finite(v) and 0 < v <= 1, "use a value in (0, 1] (1.0 = the whole micro-batch)."),
    "gr_reuse_penalty": (lambda v: isinstance(v, bool), "use True or False."),
    "unlearn_optimizer": (lambda v: v in _choices("unlearn_optimizer"), "use one of {choices}."),
    "unlearn_learning_rate": (lambda v: _finite(v) and v > 0, "use a finite value > 0 (paper: 1e-3), or None for half of `learning_rate`."),
    "unlearn_steps": (lambda v: _int(v, 1), "use an integer >= 1."),
    "unlearn_forget_weight": (lambda v: _finite(v) and v >= 0, "use a finite value >= 0."),
    "unlearn_retain_weight": (lambda v: _finite(v) and v >= 0, "use a finite value >= 0."),
    "unlearn_retain_sample_size": (lambda v: v is None or _int(v, 1), "use None (whole retain set) or an integer >= 1."),
    "unlearn_targets": (lambda v: v in _choices("unlearn_targets"), "use one of {choices}."),
    "unlearn_curvature": (lambda v: v in _choices("unlearn_curvature"), "use one of {choices}."),
    "train_curvature": (lambda v: v in _choices("train_curvature"), "use one of {choices}."),
    "unlearn_target_sample_size": (lambda v: _int(v, 1), "use an integer >= 1 (256 measured stable)."),
    "unlearn_stop": (lambda v: v in _choices("unlearn_stop"), "use one of {choices}."),
    "unlearn_stop_tolerance": (lambda v: _finite(v) and 0 <= v < 1, "use a fraction in [0, 1)."),
    "unlearn_influence_step": (lambda v: _finite(v) and 0 <= v <= 1, "use a fraction in [0, 1] (0: off)."),
    "unlearn_influence_curvature": (lambda v: v in _choices("unlearn_influence_curvature"), "use one of {choices}."),
    "unlearn_target_group_column": (lambda v: v is None or (isinstance(v, str) and bool(v)),
                                    "use None or the name of a retain-set column (e.g. 'author')."),
    "unlearn_flipped_targets": (lambda v: isinstance(v, bool), "use True or False."),
    "unlearn_retain_label_share": (lambda v: _finite(v) and 0 <= v <= 1, "use a fraction in [0, 1] (0: a uniform retain sample)."),
    "unlearn_leverage": (lambda v: isinstance(v, bool), "use True or False."),
    "unlearn_retain_restore": (lambda v: isinstance(v, bool), "use True or False."),
    "unlearn_land": (lambda v: isinstance(v, bool), "use True or False."),
    "unlearn_follow_held_out": (lambda v: isinstance(v, bool), "use True or False."),
    "unlearn_neighbour_targets": (lambda v: isinstance(v, bool), "use True or False."),
    "unlearn_held_out_sample_size": (lambda v: _int(v, 1), "use an integer >= 1."),
    "unlearn_batch_size": (lambda v: v is None or _int(v, 1), "use None or an integer >= 1."),
    "unlearn_seed": (lambda v: v is None or _int(v, 0), "use None (the training `seed`) or an integer >= 0."),
    "unlearn_max_retain_loss_rise": (lambda v: v is None or (_finite(v) and v >= 0), "use None or a finite value >= 0."),
    "unlearn_guard_retries": (lambda v: _int(v, 0), "use an integer >= 0."),
    "unlearn_guard_shrink": (lambda v: _finite(v) and 0 < v < 1, "use a value in (0, 1)."),
    "id_column": (lambda v: isinstance(v, str) and bool(v), "use a non-empty column name."),
}
# Rules between fields: (valid?, field named in the error, how to fix).
CROSS_RULES: list[tuple[Callable[[Mapping[str, Any]], bool], str, str]] = [
    (lambda c: c.get("gr_sub_batch_fraction", 1) == 1 or c.get("gr_mode") == "finite_difference",
     "gr_sub_batch_fraction", "a GR sub-batch needs gr_mode='finite_difference'; set it to 1.0 for gr_mode='exact'."),
    (lambda c: c.get("unlearn_forget_weight", 1) > 0 or c.get("unlearn_retain_weight", 1) > 0,
     "unlearn_forget_weight", "unlearn_forget_weight and unlearn_retain_weight cannot both be 0."),
    (lambda c: c.get("unlearn_influence_curvature", "estimate") == "estimate" or not c.get("unlearn_leverage", False)
     or c.get("unlearn_curvature") == "kfac",
     "unlearn_influence_curvature", "a K-FAC influence step does not combine with unlearn_leverage: set "
     "unlearn_influence_curvature='estimate', or unlearn_curvature='kfac' for K-FAC leave-out targets and step."),
    (lambda c: not c.get("unlearn_land", False) or c.get("unlearn_targets", "counterfactual") in ("counterfactual", "held_out_quantile"),
     "unlearn_land", "landing needs loss targets to land on: set unlearn_targets='counterfactual' (or "
     "'held_out_quantile'), or unlearn_land=False."),
]
UNLEARNING_FIELDS = tuple(n for n in RULES if n.startswith("unlearn_")) + ("gr_alpha", "gr_mode", "gr_norm", "seed")


def check_fields(values: Mapping[str, Any], owner: str = "IAUConfig") -> None:
    """ValueError naming the first invalid field of ``values`` (checked against ``RULES`` and ``CROSS_RULES``)."""
    for name, value in values.items():
        rule = RULES.get(name)
        if rule is not None and not rule[0](value):
            fix = rule[1].format(choices=_choices(name) if "{choices}" in rule[1] else "")
            raise ValueError(f"{owner}.{name}={value!r} is invalid: {fix}")
    for ok, name, fix in CROSS_RULES:
        if name in values and not ok(values):
            raise ValueError(f"{owner}.{name}={values[name]!r} is invalid: {fix}")
