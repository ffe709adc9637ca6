"""``IAUTrainer``: a thin ``transformers.Trainer`` that trains with gradient restriction and unlearns."""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable

import numpy as np
import torch
from datasets import Dataset
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForImageClassification,
    AutoModelForSequenceClassification,
    DataCollatorForLanguageModeling,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Trainer,
)

from .config import IAUConfig
from .losses import loss_kind
from .restriction import check_gr_setup, gr_training_step
from .request import DeletionRequest
from . import saving
from .sharding import is_sharded
from .engine import Engine
from .unlearning import IAUUnlearner, UnlearningResult, request_id
from .validation import (
    check_model_source,
    check_resume_checkpoint,
    validate_trainer_inputs,
)

_LABEL_COLUMNS = ("label", "labels", "label_ids")
_AUTO_CLASSES = (
    ("ForCausalLM", AutoModelForCausalLM),
    ("LMHeadModel", AutoModelForCausalLM),
    ("ForSequenceClassification", AutoModelForSequenceClassification),
    ("ForImageClassification", AutoModelForImageClassification),
)
_DOUBLE_BACKWARD_ATTENTION = (None, "eager", "sdpa")


def load_model(name_or_path: str, args: IAUConfig) -> PreTrainedModel:
    """Load a model by Hub id or local path, choosing the Auto class from ``config.architectures``."""
    check_model_source(name_or_path, args)  # safetensors only unless the user opts in
    kwargs = dict(args.model_init_kwargs or {}) if isinstance(args.model_init_kwargs, (dict, type(None))) else {}
    if isinstance(args.model_init_kwargs, str):
        import json

        kwargs = json.loads(args.model_init_kwargs)
    kwargs.setdefault("trust_remote_code", args.trust_remote_code)
    config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=kwargs["trust_remote_code"])
    arch = (getattr(config, "architectures", None) or [""])[0]
    auto = next((cls for suffix, cls in _AUTO_CLASSES if arch.endswith(suffix)), AutoModelForCausalLM)
    kwargs.setdefault("use_safetensors", True)
    return auto.from_pretrained(name_or_path, **kwargs)


class IAUTrainer(Trainer):
    """Trainer with gradient restriction (``gr_alpha > 0``) and ``unlearn()`` (the IAU update).

    Args:
        model: a model, or a Hub id / local path loaded with the Auto class of its architecture.
        args: an [`IAUConfig`]; defaults to ``IAUConfig(output_dir="<name>-IAU")``.
        peft_config: a ``peft.PeftConfig``; the model is wrapped with ``get_peft_model`` and only the
            adapter is trained and unlearned.
        Other arguments are those of ``transformers.Trainer`` (``processing_class``, datasets, ...).
    """

    _tag_names = ["hf-iau", "unlearning", "iau"]

    def __init__(
        self,
        model: PreTrainedModel | torch.nn.Module | str,
        args: IAUConfig | None = None,
        data_collator: Callable | None = None,
        train_dataset: Dataset | None = None,
        eval_dataset: Dataset | dict[str, Dataset] | None = None,
        processing_class: Any = None,
        peft_config: Any = None,
        **kwargs: Any,
    ) -> None:
        if args is None:
            name = model if isinstance(model, str) else type(model).__name__
            args = IAUConfig(output_dir=f"{str(name).split('/')[-1]}-IAU")
        elif not isinstance(args, IAUConfig):
            raise ValueError(f"`args` must be an IAUConfig, got {type(args).__name__}; build one with IAUConfig(...).")
        self.model_id = model if isinstance(model, str) else getattr(getattr(model, "config", None), "_name_or_path", None)
        if isinstance(model, str):
            model = load_model(model, args)
            if processing_class is None:
                processing_class = _load_processor(self.model_id, args)
        model = _apply_peft(model, peft_config, args)
        _check_gr_attention(model, args)
        if data_collator is None and isinstance(processing_class, PreTrainedTokenizerBase) and loss_kind(model) == "causal_lm":
            if processing_class.pad_token is None:
                processing_class.pad_token = processing_class.eos_token
            from .collators import CausalLMCollator  # keeps given (prompt-masked) labels

            data_collator = CausalLMCollator(processing_class)
        validate_trainer_inputs(model, args, processing_class, (("train_dataset", train_dataset), ("eval_dataset", eval_dataset)))
        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            **kwargs,
        )
        self._gr_logs: dict[str, list[float]] = defaultdict(list)
        self.unlearning_history: list[dict[str, Any]] = []
        self.parent_checkpoint: str | None = None  # folder this model came from, when not `model_id`
        self.unlearning_report: Any = None  # an evaluate_unlearning report, shown in the card
        check_gr_setup(self)  # fp16, DeepSpeed, FSDP, multi-process exact GR: clear errors
        if is_sharded(self.model):
            # A model the user sharded (FSDP2 `fully_shard`) owns its gradient reduction: Trainer.train must not
            # wrap it in DDP (which fails on DTensor parameters). This is the Trainer's own switch for such models.
            self.is_distributed_loading_by_transformers = True
            if self.args.gradient_accumulation_steps > 1:
                raise ValueError(
                    "gradient_accumulation_steps > 1 with a model you sharded yourself (fully_shard) is not supported: "
                    "Trainer's deferred gradient reduction needs a model sharded by `from_pretrained(distributed_config=...)`. "
                    "Use gradient_accumulation_steps=1 with a larger per_device_train_batch_size, or let accelerate shard it."
                )

    # --- training with gradient restriction ---------------------------------------------------
    def training_step(
        self, model: torch.nn.Module, inputs: dict[str, Any], num_items_in_batch: torch.Tensor | int | None = None
    ) -> torch.Tensor:
        """A plain step when ``gr_alpha == 0``; else adds ∇(ℓ + α‖∇ℓ‖) of this micro-batch to ``.grad``.

        Cheaper GR (see ``IAUConfig``): the penalty only on every ``gr_every_n_steps``-th optimizer step
        (plain steps in between, or the last penalty gradient reused with ``gr_reuse_penalty``), and H·u
        on a ``gr_sub_batch_fraction`` of the rows.
        """
        if self.args.gr_alpha == 0:
            return super().training_step(model, inputs, num_items_in_batch)
        return gr_training_step(self, model, inputs, num_items_in_batch)

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        """Adds the mean GR penalty ‖∇ℓ‖ since the last log to training logs."""
        if self._gr_logs and "loss" in logs:
            for key, values in self._gr_logs.items():
                logs[key] = float(np.mean(values))
            self._gr_logs.clear()
        super().log(logs, *args, **kwargs)

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any) -> Any:
        """``Trainer.train``; a missing ``resume_from_checkpoint`` is a ValueError before anything runs."""
        check_resume_checkpoint(resume_from_checkpoint, self.args.output_dir)
        return super().train(resume_from_checkpoint, *args, **kwargs)

    # --- unlearning ---------------------------------------------------------------------------
    def unlearn(
        self,
        forget_dataset: Dataset,
        retain_dataset: Dataset | None = None,
        reference_dataset: Dataset | None = None,
    ) -> UnlearningResult:
        """Make the model forget ``forget_dataset`` with the IAU update (see ``IAUConfig``).

        ``retain_dataset`` defaults to the train dataset minus the forget rows (by ``id_column``).
        ``reference_dataset`` (held-out data; defaults to ``eval_dataset``) sets the "never seen" loss
        level used by ``forget_saturation="loss"``. On any error the weights are left unchanged.
        """
        args = self.args
        deletion = self._deletion_request(forget_dataset, retain_dataset, reference_dataset)
        forget_dataset, retain_dataset, reference_dataset = deletion.forget, deletion.retain, deletion.reference
        fingerprint = deletion.fingerprint  # keyed (HMAC-SHA256), see hf_iau.request
        seed = args.unlearn_seed if args.unlearn_seed is not None else args.seed
        req = request_id(fingerprint, seed + len(self.unlearning_history))
        engine = Engine(self)
        reference, ref_passes = self._reference_level(engine, reference_dataset, req)
        unlearner = IAUUnlearner(
            engine, self._model_columns(forget_dataset), self._model_columns(retain_dataset), req, reference
        )
        result = unlearner.run()
        result.metrics["example_forward_passes"] += ref_passes
        return self.record_unlearning(result, fingerprint, req, method="iau")

    def record_unlearning(
        self,
        result: UnlearningResult,
        fingerprint: str,
        request: str,
        method: str,
        config: dict[str, Any] | None = None,
    ) -> UnlearningResult:
        """Append a finished request to ``unlearning_history`` (read by the card and ledger) and log it.

        The request validated last by ``_deletion_request`` / ``_validate_unlearning_data`` is committed to the
        model's deletion record (its rows stay deleted for later requests) and its keyed fingerprint is recorded.
        """
        deletion, self._pending_deletion = getattr(self, "_pending_deletion", None), None
        extra: dict[str, Any] = {}
        if deletion is not None:
            fingerprint = deletion.fingerprint
            record = deletion.commit(self)
            extra = {"fingerprint_scheme": deletion.scheme, "fingerprint_key_id": deletion.key_id,
                     "deleted_rows": record.count, "deleted_rows_sha256": record.sha256()}
        result.forget_fingerprint = fingerprint
        self.unlearning_history.append(
            {
                "request_id": request,
                "method": method,
                "forget_fingerprint": fingerprint,
                "forget_size": result.forget_size,
                "retain_size": result.retain_size,
                "metrics": dict(result.metrics),
                "config": config if config is not None else self.unlearning_config(),
                **extra,
            }
        )
        if self.state is not None:
            self.log({f"unlearn/{k}": v for k, v in result.metrics.items()})
        return result

    def unlearning_config(self) -> dict[str, Any]:
        """The IAUConfig fields that define the unlearning update (for cards, ledgers, config hashes)."""
        names = (
            "gr_alpha gr_mode gr_norm gr_fd_radius unlearn_optimizer unlearn_learning_rate unlearn_steps "
            "forget_weight retain_weight retain_sample_size forget_saturation unlearn_stop unlearn_stop_tolerance unlearn_stop_patience "
            "unlearn_max_retain_loss_rise seed unlearn_seed"
        ).split()
        return {n: getattr(self.args, n) for n in names}

    def _deletion_request(
        self, forget: Dataset, retain: Dataset | None = None, reference: Dataset | None = None
    ) -> DeletionRequest:
        """Validate a request: retain = train − forget − every row deleted so far (``hf_iau.request``).

        Kept as the pending request: ``record_unlearning`` commits its rows to the deletion record."""
        self._pending_deletion = DeletionRequest.build(self, forget, retain, reference)
        return self._pending_deletion

    def _validate_unlearning_data(self, forget: Dataset, retain: Dataset | None) -> tuple[Dataset, Dataset]:
        """``(forget, retain)`` of ``_deletion_request`` (for the baselines in ``hf_iau.methods``)."""
        deletion = self._deletion_request(forget, retain)
        return deletion.forget, deletion.retain

    def _check_labels(self, name: str, ds: Dataset) -> None:
        cols = [c for c in _LABEL_COLUMNS if c in ds.column_names]
        kind = loss_kind(self.model)
        if not cols:
            from .collators import CausalLMCollator

            if kind == "causal_lm" and isinstance(self.data_collator, (DataCollatorForLanguageModeling, CausalLMCollator)):
                return
            if kind == "causal_lm" and "input_ids" in ds.column_names and len(ds):
                probe = self.data_collator([{k: v for k, v in ds[0].items() if k in self._signature()}])
                if "labels" in probe:
                    return
            raise ValueError(
                f"`{name}` rows have no labels: add a `label`/`labels` column, or (causal LM) use a collator that "
                "creates `labels`, e.g. DataCollatorForLanguageModeling(tokenizer, mlm=False)."
            )
        if kind == "classification":
            labels = np.asarray(ds[cols[0]])
            num_labels = self.model.config.num_labels
            if labels.ndim == 1 and len(labels) and (labels.min() < 0 or labels.max() >= num_labels):
                raise ValueError(
                    f"`{name}`: label values must lie in [0, {num_labels - 1}] for this model's head "
                    f"(num_labels={num_labels}), found [{labels.min()}, {labels.max()}]; fix the labels or the head."
                )

    def _signature(self) -> list[str]:
        self._set_signature_columns_if_needed()
        return list(self._signature_columns) + list(_LABEL_COLUMNS)

    def _model_columns(self, ds: Dataset) -> Dataset:
        keep = set(self._signature())
        drop = [c for c in ds.column_names if c not in keep]
        return ds.remove_columns(drop) if drop else ds

    def _reference_level(self, engine: Engine, reference: Dataset | None, req: str) -> tuple[dict[str, Any], float]:
        """Per-example losses (for targets), mean loss and accuracy of a seeded sample of held-out data: what a
        never-seen example looks like. Empty without held-out data (saturation then falls back to flip)."""
        if self.args.forget_saturation not in ("loss", "auto"):
            return {}, 0.0
        if reference is None and isinstance(self.eval_dataset, Dataset):
            reference = self.eval_dataset
        if reference is None or len(reference) == 0:
            return {}, 0.0
        n = min(len(reference), self.args.reference_sample_size)
        rng = np.random.default_rng([self.args.seed, int(req[:12], 16)])
        idx = sorted(rng.choice(len(reference), size=n, replace=False).tolist())
        out = engine.per_example(self._model_columns(reference), idx)
        level: dict[str, Any] = {"loss": float(out["loss"].mean()), "losses": out["loss"].tolist()}
        if "correct" in out:
            level["accuracy"] = float(out["correct"].mean())
        return level, float(n)

    # --- saving -------------------------------------------------------------------------------
    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Save atomically (complete old or complete new folder), with the unlearning card and ledger
        (``hf_iau.saving``; a model sharded with ``fully_shard`` is gathered on rank 0, on the CPU)."""
        saving.save_model(self, output_dir or self.args.output_dir, _internal_call, base_save=super().save_model)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Trainer's save, with the arguments as JSON instead of the pickled ``training_args.bin``."""
        super()._save(output_dir, state_dict)
        saving.args_as_json(self.args, output_dir or self.args.output_dir)

    def _write_unlearning_artifacts(self, output_dir: str) -> None:
        """Model card and deletion ledger for the unlearning requests (filled in by hf_iau.hub)."""
        from .hub import write_unlearning_artifacts

        write_unlearning_artifacts(self, output_dir)

    def push_to_hub(
        self,
        commit_message: str | None = "Upload unlearned checkpoint (hf-iau)",
        blocking: bool = True,
        token: str | None = None,
        revision: str | None = None,
        private: bool | None = None,
        merge_adapter: bool = False,
        repo_id: str | None = None,
        **kwargs: Any,
    ) -> Any:
        """Save (weights, card, ledger) and upload: full model, LoRA adapter alone, or merged (``merge_adapter=True``).

        Safetensors only. Without unlearning requests or a parent ledger this is ``Trainer.push_to_hub``.
        """
        from .hub import has_unlearning_record, push_unlearned

        if not merge_adapter and not has_unlearning_record(self):
            return super().push_to_hub(commit_message, blocking, token, revision, private, **kwargs)
        return push_unlearned(
            self, repo_id=repo_id, commit_message=commit_message, blocking=blocking, token=token,
            revision=revision, private=private, merge_adapter=merge_adapter,
        )


def _load_processor(name_or_path: str, args: IAUConfig) -> Any:
    from transformers import AutoImageProcessor, AutoTokenizer

    for auto in (AutoTokenizer, AutoImageProcessor):
        try:
            return auto.from_pretrained(name_or_path, trust_remote_code=args.trust_remote_code)
        except (OSError, ValueError, KeyError):
            continue
    return None


def _apply_peft(model: torch.nn.Module, peft_config: Any, args: IAUConfig) -> torch.nn.Module:
    if peft_config is None:
        return model
    from peft import PeftConfig, PeftModel, get_peft_model

    if isinstance(model, PeftModel):
        raise ValueError(
            "You passed a PeftModel and a `peft_config`: pass either a base model with `peft_config`, or the "
            "PeftModel with peft_config=None (merge_and_unload() first to start a new adapter)."
        )
    if not isinstance(peft_config, PeftConfig):
        raise ValueError(f"`peft_config` must be a peft.PeftConfig (e.g. LoraConfig), got {type(peft_config).__name__}.")
    try:
        model = get_peft_model(model, peft_config)
    except ValueError as err:
        raise ValueError(
            f"`peft_config.target_modules`={getattr(peft_config, 'target_modules', None)!r} do not match this model's "
            f"modules ({err}); name modules that exist, e.g. from [n for n, _ in model.named_modules()]."
        ) from None
    if args.gradient_checkpointing and hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()  # else LoRA silently stops training under checkpointing
    return model


def _check_gr_attention(model: torch.nn.Module, args: IAUConfig) -> None:
    if args.gr_alpha == 0 or args.gr_mode != "exact":
        return
    attn = getattr(getattr(model, "config", None), "_attn_implementation", None)
    if attn not in _DOUBLE_BACKWARD_ATTENTION:
        raise ValueError(
            f"gr_mode='exact' needs double backward, which attn_implementation={attn!r} does not support; load the "
            "model with attn_implementation='sdpa' or 'eager', or use gr_mode='finite_difference'."
        )
