"""``IAUTrainer``: a thin ``transformers.Trainer`` that trains with gradient restriction and unlearns."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from datasets import Dataset
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForImageClassification,
    AutoModelForSequenceClassification,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Trainer,
)

from .config import IAUConfig
from .losses import loss_kind
from . import saving
from .curvature import Curvature, CurvatureCallback, CurvatureError, ExampleGradients
from .restriction import GradientRestriction
from .request import DeletionRecord, DeletionRequest
from .result import UnlearningResult
from .sharding import is_sharded
from .validation import (
    check_model_source,
    check_resume_checkpoint,
    validate_trainer_inputs,
)

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
        self.gradient_restriction = GradientRestriction(self.args) if self.args.gr_alpha > 0 else None
        self.unlearning_history: list[dict[str, Any]] = []
        self.parent_checkpoint: str | None = None  # folder this model came from, when not `model_id`
        self.unlearning_report: Any = None  # an evaluate_unlearning report, shown in the card
        # influence paid for at training time: train() accumulates the curvature from its own gradients, save_model
        # writes it beside the weights (bound to their sha256), and a model loaded from such a folder holds it;
        # requests use a training-time one only with unlearn_curvature='training', one measured on rows always
        self.curvature_callback = CurvatureCallback(per_example=self.args.train_curvature == "per_example")
        self.add_callback(self.curvature_callback)
        self.curvature: Curvature | None = self._saved_curvature()
        if self.gradient_restriction is not None:
            self.gradient_restriction.check_setup(self)  # fp16, DeepSpeed, FSDP, multi-process exact GR: clear errors
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
        if self.gradient_restriction is not None:
            return self.gradient_restriction.training_step(self, model, inputs, num_items_in_batch)
        if not self.curvature_callback.wants_examples():
            return super().training_step(model, inputs, num_items_in_batch)
        # the last epoch's per-example gradient squares, from hooks on this step's own backward (hf_iau.curvature)
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        rows = next(int(v.shape[0]) for v in inputs.values() if isinstance(v, torch.Tensor) and v.dim() > 0)
        with ExampleGradients(self.model, [p for _, p in named]) as hooks:
            hooks.expect(rows)
            loss = super().training_step(model, inputs, num_items_in_batch)
            hooks.collect(self._loss_factor(num_items_in_batch) / rows, [None] * len(named))
        self.curvature_callback.add_examples([n for n, _ in named], hooks.squares, hooks.uncovered, rows)
        return loss

    def _loss_factor(self, num_items_in_batch: Any) -> float:
        """k in the loss Trainer.training_step differentiates, k·(1/B)·Σ_i ℓ_i: × the process count when the loss is
        averaged over every device's items, ÷ the accumulation steps when the loss is not normalised by the items
        (Trainer.compute_loss / training_step). A loss normalised by tokens is treated as a mean over rows: only
        the shape of F̂ is used downstream."""
        by_items = num_items_in_batch is not None and (self.model_accepts_loss_kwargs or self.compute_loss_func is not None)
        k = float(self.accelerator.num_processes) if by_items and self.args.average_tokens_across_devices else 1.0
        scaled_for_ga = getattr(self, "loss_is_scaled_for_ga", None)
        if not (by_items if scaled_for_ga is None else scaled_for_ga) and self.compute_loss_func is None:
            k /= self.current_gradient_accumulation_steps
        return k

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        """Adds the mean GR penalty ‖∇ℓ‖ since the last log to training logs."""
        if self.gradient_restriction is not None and "loss" in logs:
            logs.update(self.gradient_restriction.pop_logs())
        super().log(logs, *args, **kwargs)

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any) -> Any:
        """``Trainer.train``; a missing ``resume_from_checkpoint`` is a ValueError before anything runs."""
        check_resume_checkpoint(resume_from_checkpoint, self.args.output_dir)
        out = super().train(resume_from_checkpoint, *args, **kwargs)
        measured = self.curvature_callback.curvature(self.model)
        self.curvature = measured if measured is not None else self.curvature
        return out

    def _saved_curvature(self) -> Curvature | None:
        """The curvature saved beside the weights this model was loaded from; None (recomputed per request, with a
        warning when the file was stale) otherwise."""
        folder = self.model_id if isinstance(self.model_id, str) and Path(self.model_id).is_dir() else None
        if folder is None:
            return None
        try:
            return Curvature.load(folder, self.model)
        except CurvatureError as err:
            warnings.warn(f"{err} Requests recompute it from their rows.", stacklevel=3)
            return None

    # --- unlearning ---------------------------------------------------------------------------
    def unlearn(
        self,
        forget_dataset: Dataset,
        retain_dataset: Dataset | None = None,
        held_out_dataset: Dataset | None = None,
        *,
        method: str = "iau",
        budget: float | None = None,
        allow_noop: bool = False,
        reference_dataset: Dataset | None = None,
        **options: Any,
    ) -> UnlearningResult:
        """Make the model forget ``forget_dataset`` with ``method`` (IAU by default; any registered baseline).

        ``retain_dataset`` defaults to the train dataset minus every row deleted so far (by ``id_column``).
        ``held_out_dataset`` (data the model never saw; defaults to ``eval_dataset``) sets the targets' "never seen"
        level. ``options`` override the method's options (for IAU the IAUConfig ``unlearn_*`` fields, e.g.
        ``unlearn_steps=5``); ``budget`` caps example-gradient passes. A request that changes nothing is refused
        unless ``allow_noop``. On any error the weights are left unchanged and nothing is recorded.
        """
        from .methods import get_method

        if reference_dataset is not None:
            warnings.warn("unlearn(reference_dataset=) is deprecated; use held_out_dataset=.", FutureWarning, stacklevel=2)
            held_out_dataset = held_out_dataset if held_out_dataset is not None else reference_dataset
        fn = get_method(method)
        if method == "iau":
            options["held_out_dataset"] = held_out_dataset
        elif held_out_dataset is not None:
            raise ValueError(f"method {method!r} takes no held-out data (IAU's targets use it); drop held_out_dataset=.")
        if allow_noop:
            options["allow_noop"] = True
        return fn(self, forget_dataset, retain_dataset, budget=budget, **options)

    @property
    def deletion_record(self) -> DeletionRecord:
        """Rows deleted so far for this model: its parent checkpoint's record plus this trainer's requests."""
        from .hub import parent_checkpoint

        source = parent_checkpoint(self)
        resolved = str(Path(source).resolve()) if source and Path(source).is_dir() else source
        record = self.__dict__.get("_deletion_record")
        if record is None or record.source != resolved:
            record = _load_record(source, self._weights_from_hub())
            for kid, digests in (self.__dict__.get("_deleted_digests") or {}).items():
                record.add(kid, digests)
            self.__dict__["_deletion_record"] = record
        return record

    def _weights_from_hub(self) -> bool:
        model = getattr(self, "model", None)
        config = getattr(getattr(model, "base_model", model), "config", None) or getattr(model, "config", None)
        return bool(getattr(self, "parent_checkpoint", None)) or bool(getattr(config, "_commit_hash", None))

    def record_unlearning(
        self,
        result: UnlearningResult,
        deletion: DeletionRequest,
        request_id: str,
        method: str,
        config: dict[str, Any],
        inputs: dict[str, Any],
        curvature: Curvature | None = None,
    ) -> UnlearningResult:
        """Commit a finished request: its rows join the deletion record, it joins ``unlearning_history`` (read by
        the card and ledger: ``config`` = the method's options, ``inputs`` = the public seed, request index and
        ``allow_noop``; together everything that determines the update), and its final metrics are logged
        (``state.log_history``, callbacks, ``report_to``). ``curvature``: F̂ the request measured or used, kept (bound
        to the new weights) for later requests and the saved folder."""
        own = self.__dict__.setdefault("_deleted_digests", {})
        own.setdefault(deletion.key_id, set()).update(deletion.row_digests)
        record = deletion.commit(self.deletion_record)
        result.forget_fingerprint = deletion.fingerprint
        self.unlearning_history.append(
            {
                "request_id": request_id,
                "method": method,
                "forget_fingerprint": deletion.fingerprint,
                "forget_size": result.forget_size,
                "retain_size": result.retain_size,
                "metrics": dict(result.metrics),
                "config": dict(config),
                **inputs,
                "fingerprint_scheme": deletion.scheme,
                "fingerprint_key_id": deletion.key_id,
                "deleted_rows": record.count,
                "deleted_rows_sha256": record.sha256(),
            }
        )
        self.log({f"unlearn/{k}": v for k, v in result.metrics.items()})
        curvature = curvature if curvature is not None else self.curvature  # measured by the request, or kept
        if curvature is not None:  # an unlearning update is small: F̂ stays valid to first order
            self.curvature = curvature.bind(self.model, f"unlearning request {inputs.get('request_index')}")
        return result

    def _model_columns(self, ds: Dataset) -> Dataset:
        """``ds`` without the columns the model does not take (see ``Engine.model_columns``)."""
        from .engine import Engine

        return Engine(self).model_columns(ds)

    # --- saving -------------------------------------------------------------------------------
    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Save atomically (complete old or complete new folder), with the unlearning card and ledger
        (``hf_iau.saving``; a model sharded with ``fully_shard`` is gathered on rank 0, on the CPU)."""
        saving.save_model(self, output_dir or self.args.output_dir, _internal_call, base_save=super().save_model)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Trainer's save, with the arguments as JSON instead of the pickled ``training_args.bin``."""
        super()._save(output_dir, state_dict)
        if self.args.should_save:  # Trainer._save writes nothing on the other processes; neither do we
            saving.args_as_json(self.args, output_dir or self.args.output_dir)

    def _write_unlearning_artifacts(self, output_dir: str) -> None:
        """Model card and deletion ledger for the unlearning requests (filled in by hf_iau.hub)."""
        from .hub import write_unlearning_artifacts

        if self.curvature is not None:
            self.curvature.save(output_dir)
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
    from transformers import set_seed

    set_seed(args.seed)  # the adapter's random init follows args.seed, like the rest of the run, not the RNG's history
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


def _load_record(source: str | None, from_hub: bool) -> DeletionRecord:
    """The deletion record of ``source``: a local folder, or (``from_hub``) a Hub repo whose ledger and record are
    read from a temporary folder removed afterwards (``hub.fetch_record_folder``)."""
    from .hub import fetch_record_folder

    if not source or Path(source).is_dir() or not from_hub:
        return DeletionRecord.load(source)
    with fetch_record_folder(source) as folder:  # read inside: the folder is removed after the block
        record = DeletionRecord.load(folder) if folder else DeletionRecord(source=source)
    record.source = source
    return record
