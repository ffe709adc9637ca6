"""``IAUConfig``: TrainingArguments plus gradient restriction (GR) and the IAU unlearning update."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from transformers import TrainingArguments

GR_MODES = ("finite_difference", "exact")
GR_NORMS = ("global", "per_tensor")
UNLEARN_OPTIMIZERS = ("adam", "sgd")
FORGET_SATURATIONS = ("none", "loss", "flip", "auto")
UNLEARN_STOPS = ("fixed", "auto")


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

        unlearn_optimizer, unlearn_learning_rate, unlearn_steps, forget_weight, retain_weight,
        retain_sample_size, forget_saturation, unlearn_stop, ... (see each field's help).

    Defaults: up to 20 Adam steps (lr: half the training learning rate) with the gradient recomputed, a seeded 32-example retain sample
    per step weighted `retain_weight=4`, per-example counterfactual forget targets (`"auto"`) and an automatic stop
    once ≤ 5% of the forget examples are still active (benchmarks/results/removal.md and removal_rw4.md have the
    measurements behind them).

    Reference parity (the authors' update): `unlearn_optimizer="adam"`, `unlearn_steps=1`,
    `forget_weight=retain_weight=1.0`, `retain_sample_size=None`, `forget_saturation="none"`.
    """

    # --- gradient restriction -------------------------------------------------------------
    gr_alpha: float = field(
        default=0.0,
        metadata={"help": "Gradient-restriction weight α in ℓ + α‖∇θℓ‖ (0 = off; the paper uses 0.005)."},
    )
    gr_mode: str = field(
        default="finite_difference",
        metadata={
            "help": "How the GR gradient is computed: 'finite_difference' (two forward/backward passes, works "
            "with any attention) or 'exact' (double backward; SDPA runs under its MATH backend).",
            "choices": list(GR_MODES),
        },
    )
    gr_norm: str = field(
        default="global",
        metadata={
            "help": "GR norm: 'global' (‖g‖₂ over all trainable parameters) or 'per_tensor' (sum of "
            "per-tensor norms, as in the authors' code).",
            "choices": list(GR_NORMS),
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
    unlearn_optimizer: str = field(
        default="adam",
        metadata={
            "help": "Optimizer of the unlearning update, created fresh for each request: 'adam' or 'sgd'.",
            "choices": list(UNLEARN_OPTIMIZERS),
        },
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
            "unlearn_stop='auto'."
        },
    )
    forget_weight: float = field(default=1.0, metadata={"help": "Weight w_f of the ascent term on the forget set."})
    retain_weight: float = field(
        default=4.0,
        metadata={
            "help": "Weight w_r of the descent (gradient-correction) term on retained data (reference parity: 1.0). "
            "4.0 was chosen on the tuning scenarios of benchmarks/results/removal.md (mislabelled, poison_vision, "
            "topic_lm): the ascent costs utility, and w_r = 1 lost test accuracy the retrained model keeps."
        },
    )
    retain_sample_size: int | None = field(
        default=32,
        metadata={
            "help": "Retained examples per step: None uses the whole retain set; an int draws a seeded sample "
            "per step (seeded by `unlearn_seed` or `seed`, the request and the step; equal on every process)."
        },
    )
    forget_saturation: str = field(
        default="auto",
        metadata={
            "help": "Stop pushing forget examples that are already forgotten: 'auto' (default: each example until its "
            "loss first reaches its counterfactual target — its estimated loss under the model retrained without the "
            "forget set, from the group influence of the whole forget set calibrated on held-out data, see "
            "hf_iau/counterfactual.py; 'flip' without held-out data), 'loss' (each example until its loss reaches "
            "its rank-matched quantile of the held-out losses, see `reference_dataset`), 'flip' (only examples still "
            "predicted correctly), 'none' (every example, reference parity).",
            "choices": list(FORGET_SATURATIONS),
        },
    )
    unlearn_stop: str = field(
        default="auto",
        metadata={
            "help": "'fixed' runs `unlearn_steps` steps; 'auto' stops earlier once at most "
            "`unlearn_stop_tolerance` of the forget examples are active under `forget_saturation`.",
            "choices": list(UNLEARN_STOPS),
        },
    )
    unlearn_stop_tolerance: float = field(
        default=0.05,
        metadata={
            "help": "unlearn_stop='auto' stops once at most this fraction of the forget examples is still active."
        },
    )
    unlearn_stop_patience: int = field(
        default=3,
        metadata={
            "help": "unlearn_stop='auto' with 'loss' targets also stops when, after the first example was forgotten, the number of "
            "active forget examples has not reached a new low for this many steps (the last ones can resist: on "
            "BBC/MiniLM 5 of 16 stayed active for 15 steps)."
        },
    )
    reference_sample_size: int = field(
        default=512,
        metadata={"help": "Held-out examples used to measure the reference ('never seen') loss level."},
    )
    unlearn_batch_size: int | None = field(
        default=None,
        metadata={"help": "Batch size of unlearning passes (default: per_device_eval_batch_size)."},
    )
    unlearn_seed: int | None = field(
        default=None, metadata={"help": "Seed of retain sampling during unlearning (default: `seed`)."}
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

    def __post_init__(self) -> None:
        self._validate_iau()
        super().__post_init__()

    def _validate_iau(self) -> None:
        def need(ok: bool, name: str, fix: str) -> None:
            if not ok:
                raise ValueError(f"IAUConfig.{name}={getattr(self, name)!r} is invalid: {fix}")

        def finite(x: Any) -> bool:
            return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)

        need(finite(self.gr_alpha) and self.gr_alpha >= 0, "gr_alpha", "use a finite value >= 0 (0 = off, paper: 0.005).")
        need(self.gr_mode in GR_MODES, "gr_mode", f"use one of {GR_MODES}.")
        need(self.gr_norm in GR_NORMS, "gr_norm", f"use one of {GR_NORMS}.")
        need(finite(self.gr_fd_radius) and self.gr_fd_radius > 0, "gr_fd_radius", "use a finite value > 0 (e.g. 1e-3).")
        need(
            isinstance(self.gr_every_n_steps, int) and not isinstance(self.gr_every_n_steps, bool)
            and self.gr_every_n_steps >= 1,
            "gr_every_n_steps",
            "use an integer >= 1 (1 = GR on every step).",
        )
        need(
            finite(self.gr_sub_batch_fraction) and 0 < self.gr_sub_batch_fraction <= 1,
            "gr_sub_batch_fraction",
            "use a value in (0, 1] (1.0 = the whole micro-batch).",
        )
        need(
            self.gr_sub_batch_fraction == 1 or self.gr_mode == "finite_difference",
            "gr_sub_batch_fraction",
            "a GR sub-batch needs gr_mode='finite_difference'; set it to 1.0 for gr_mode='exact'.",
        )
        need(isinstance(self.gr_reuse_penalty, bool), "gr_reuse_penalty", "use True or False.")
        need(self.unlearn_optimizer in UNLEARN_OPTIMIZERS, "unlearn_optimizer", f"use one of {UNLEARN_OPTIMIZERS}.")
        if self.unlearn_learning_rate is None and finite(self.learning_rate) and self.learning_rate > 0:
            self.unlearn_learning_rate = 0.5 * float(self.learning_rate)
        need(
            finite(self.unlearn_learning_rate) and self.unlearn_learning_rate > 0,
            "unlearn_learning_rate",
            "use a finite value > 0 (paper: 1e-3), or None for half of `learning_rate`.",
        )
        need(
            isinstance(self.unlearn_steps, int) and not isinstance(self.unlearn_steps, bool) and self.unlearn_steps >= 1,
            "unlearn_steps",
            "use an integer >= 1.",
        )
        need(finite(self.forget_weight) and self.forget_weight >= 0, "forget_weight", "use a finite value >= 0.")
        need(finite(self.retain_weight) and self.retain_weight >= 0, "retain_weight", "use a finite value >= 0.")
        need(
            self.forget_weight > 0 or self.retain_weight > 0,
            "forget_weight",
            "forget_weight and retain_weight cannot both be 0.",
        )
        need(
            self.retain_sample_size is None
            or (isinstance(self.retain_sample_size, int) and self.retain_sample_size >= 1),
            "retain_sample_size",
            "use None (whole retain set) or an integer >= 1.",
        )
        need(self.forget_saturation in FORGET_SATURATIONS, "forget_saturation", f"use one of {FORGET_SATURATIONS}.")
        need(self.unlearn_stop in UNLEARN_STOPS, "unlearn_stop", f"use one of {UNLEARN_STOPS}.")
        need(
            finite(self.unlearn_stop_tolerance) and 0 <= self.unlearn_stop_tolerance < 1,
            "unlearn_stop_tolerance",
            "use a fraction in [0, 1).",
        )
        need(
            isinstance(self.unlearn_stop_patience, int) and self.unlearn_stop_patience >= 1,
            "unlearn_stop_patience",
            "use an integer >= 1.",
        )
        need(
            isinstance(self.reference_sample_size, int) and self.reference_sample_size >= 1,
            "reference_sample_size",
            "use an integer >= 1.",
        )
        need(
            self.unlearn_batch_size is None or (isinstance(self.unlearn_batch_size, int) and self.unlearn_batch_size >= 1),
            "unlearn_batch_size",
            "use None or an integer >= 1.",
        )
        need(
            self.unlearn_max_retain_loss_rise is None
            or (finite(self.unlearn_max_retain_loss_rise) and self.unlearn_max_retain_loss_rise >= 0),
            "unlearn_max_retain_loss_rise",
            "use None or a finite value >= 0.",
        )
        need(
            isinstance(self.unlearn_guard_retries, int) and self.unlearn_guard_retries >= 0,
            "unlearn_guard_retries",
            "use an integer >= 0.",
        )
        need(
            finite(self.unlearn_guard_shrink) and 0 < self.unlearn_guard_shrink < 1,
            "unlearn_guard_shrink",
            "use a value in (0, 1).",
        )
        need(isinstance(self.id_column, str) and bool(self.id_column), "id_column", "use a non-empty column name.")
