"""Model cards for unlearned checkpoints, rendered from the deletion ledger.

The card is built only from ledger entries (keyed fingerprints, sizes, hashes, configs, aggregate
metrics) plus optional aggregate evaluation metrics: it never sees a forget-set row.
Template: ``model_cards/unlearned_model_card.md`` (Jinja, rendered by
``huggingface_hub.ModelCard.from_template``).
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

from huggingface_hub import EvalResult, ModelCard, ModelCardData

TEMPLATE_NAME = "unlearned_model_card.md"
CARD_TAGS = ("unlearning", "iau", "hf-iau", "machine-unlearning")
PAPER = "arXiv:2507.23257"
EVAL_MODELS = ("original", "unlearned", "retrained")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")
_HYPERPARAMETERS = (  # of the unlearning update; how the model was trained comes from its own record
    ("unlearn_optimizer", "unlearning optimizer"),
    ("unlearn_learning_rate", "unlearning learning rate"),
    ("unlearn_steps", "unlearning steps"),
    ("unlearn_forget_weight", "forget weight w_f"),
    ("unlearn_retain_weight", "retain weight w_r"),
    ("unlearn_retain_sample_size", "retain sample per step"),
    ("unlearn_targets", "forget targets"),
    ("unlearn_target_sample_size", "retained rows calibrating the targets"),
    ("unlearn_target_group_column", "calibration sample drawn by entity (column)"),
    ("unlearn_curvature", "curvature of the estimate"),
    ("unlearn_flipped_targets", "flipped-class target levels"),
    ("unlearn_leverage", "leave-out curvature of each removed set"),
    ("unlearn_retain_restore", "retain descent restores only"),
    ("unlearn_retain_label_share", "share of the retain sample with the forget labels"),
    ("unlearn_land", "rows past their target pulled back"),
    ("unlearn_follow_held_out", "targets follow the held-out losses"),
    ("unlearn_neighbour_targets", "targets from the nearest held-out rows"),
    ("unlearn_influence_step", "influence step λ (share of the estimated removal step)"),
    ("unlearn_influence_curvature", "curvature of the influence step"),
    ("unlearn_stop", "stop rule"),
    ("unlearn_max_retain_loss_rise", "max retain-loss rise"),
    ("seed", "seed"),
    ("unlearn_seed", "unlearning seed"),
)
_OLD_CONFIG_NAMES = {  # ledgers written before the unlearn_* names (hf-iau 0.1)
    "forget_weight": "unlearn_forget_weight", "retain_weight": "unlearn_retain_weight",
    "retain_sample_size": "unlearn_retain_sample_size", "forget_saturation": "unlearn_targets",
}
_SCHEMES = {"hmac-sha256": "HMAC-SHA256", "sha256": "sha256 (unkeyed)"}
_VARIANTS = {
    "full": "full model",
    "adapter": "LoRA/PEFT adapter only (load it on top of the base model)",
    "merged": "full model with the unlearned LoRA adapter merged in (`merge_and_unload`)",
}


def template_path() -> Path:
    """Path of the card template: the copy shipped in the package, else the repo's ``model_cards/``."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "model_cards" / TEMPLATE_NAME, here.parent / "model_cards" / TEMPLATE_NAME):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"model card template {TEMPLATE_NAME} not found next to hf_iau (hf_iau/model_cards/) or in the "
        "repository's model_cards/; reinstall hf-iau or pass `template=`."
    )


def is_hub_id(name: str | None) -> bool:
    """True for a Hub-style repo id (``name`` or ``org/name``) that is not an existing local path."""
    return bool(name) and not os.path.exists(str(name)) and bool(_HUB_ID.match(str(name)))


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
            return f"{value:.3e}"
        return f"{value:.4f}"
    return str(value)


def _param(value: Any) -> str:
    if isinstance(value, float) and not isinstance(value, bool):
        return f"{value:g}"
    return "–" if value is None else str(value)


def _count(value: Any) -> str:
    v = _num(value)
    return str(int(v)) if v is not None and v.is_integer() else _fmt(value)


def _num(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def scheme_of(entry: Mapping[str, Any]) -> str:
    """Fingerprint scheme of a ledger entry: ``hmac-sha256`` (keyed) or ``sha256`` (old, unkeyed)."""
    return str(entry.get("fingerprint_scheme") or "sha256")


def _metric_rows(metrics: Mapping[str, Any]) -> list[dict[str, str]]:
    rows = []
    for key in metrics:
        if key.endswith("_before") and key[: -len("_before")] + "_after" in metrics:
            base = key[: -len("_before")]
            rows.append({"name": base.replace("_", " "), "before": _fmt(metrics[key]), "after": _fmt(metrics[base + "_after"])})
    for key in ("update_norm", "forget_active_fraction_final", "held_out_loss", "reference_loss"):
        if key in metrics:
            rows.append({"name": key.replace("_", " "), "before": "", "after": _fmt(metrics[key])})
    for key in ("steps", "guard_retries", "stopped_early"):
        if key in metrics:
            rows.append({"name": key.replace("_", " "), "before": "", "after": _count(metrics[key])})
    return rows


def _evaluation_rows(evaluation: Mapping[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    models = [m for m in EVAL_MODELS if any(k.startswith(m + "/") for k in evaluation)]
    names: list[str] = []
    for key in evaluation:
        if "/" in key:
            name = key.split("/", 1)[1]
            if name not in names:
                names.append(name)
    rows = [{"name": n.replace("_", " "), "values": [_fmt(evaluation.get(f"{m}/{n}")) for m in models]} for n in names]
    if "gap_to_retrain" in evaluation:
        rows.append({"name": "gap to retrain (unlearned)", "values": ["" if m != "unlearned" else _fmt(evaluation["gap_to_retrain"]) for m in models]})
    return models, rows


def _eval_results(latest: Mapping[str, Any], task_type: str, evaluation: Mapping[str, Any] | None) -> list[EvalResult]:
    metrics = latest.get("metrics") or {}
    fp = str(latest.get("forget_fingerprint", ""))
    sets = {
        "forget": (f"forget set ({latest.get('forget_size')} examples, {scheme_of(latest)} {fp[:16]})", "forget-set"),
        "retain": (f"retain set ({latest.get('retain_size')} examples)", "retain-set"),
        "test": ("test set (held out from training)", "test-set"),
    }
    found = [(split, stat, metrics.get(f"{split}_{stat}_after"), f"{split} {stat} after unlearning")
             for split in ("forget", "retain") for stat in ("loss", "accuracy")]
    recorded = {(split, stat) for split, stat, value, _ in found if _num(value) is not None}
    for key, value in (evaluation or {}).items():  # the evaluation against the retrained model (hf-iau evaluate)
        split, _, stat = key.removeprefix("unlearned/").partition("_")
        if key.startswith("unlearned/") and split in sets and stat and (split, stat) not in recorded:
            found.append((split, stat, value, f"{split} {stat.replace('_', ' ')} (evaluation vs retrained model)"))
    found.append(("forget", "gap_to_retrain", (evaluation or {}).get("gap_to_retrain"), "gap to the retrained model"))
    return [
        EvalResult(task_type=task_type, dataset_type=sets[split][1], dataset_name=sets[split][0], metric_type=stat,
                   metric_name=name, metric_value=round(value, 6))
        for split, stat, value, name in ((sp, st, _num(v), n) for sp, st, v, n in found) if value is not None
    ]


def training_text(training: Mapping[str, Any] | None) -> str:
    """How the unlearned checkpoint was trained, as its own training record says (never the current IAUConfig)."""
    if not training:
        return "not recorded (no training record of this checkpoint was found)"
    source = training.get("source", "the checkpoint's training record")
    alpha = _num(training.get("gr_alpha"))
    if not alpha:
        return f"without gradient restriction (per {source})"
    return (f"with gradient restriction ℓ + α‖∇ℓ‖, α = {alpha:g}, mode `{training.get('gr_mode')}`, norm "
            f"`{training.get('gr_norm')}` (per {source})")


def build_model_card(
    entries: Sequence[Mapping[str, Any]],
    *,
    model_name: str,
    base_model: str | None = None,
    parent: Mapping[str, Any] | None = None,
    variant: str | None = None,
    task_type: str | None = None,
    evaluation: Mapping[str, Any] | None = None,
    hardware: str | None = None,
    versions: Mapping[str, str] | None = None,
    ledger_name: str = "deletion_ledger.jsonl",
    template: str | os.PathLike | None = None,
) -> ModelCard:
    """Render the unlearning card from sealed ledger ``entries`` (oldest first; the last is the latest request).

    What the card says about the model (base model, dataset, training record, parent, format, task, hardware,
    versions) comes from the latest entry; a keyword given here replaces it (entries of old ledgers lack some).
    ``parent``: ``{"name", "sha256"}`` of the checkpoint that was unlearned; ``evaluation``: flat aggregate metrics
    ``{"original|unlearned|retrained/<metric>": float, "gap_to_retrain": float}`` (``UnlearningReport.metrics``);
    ``variant``: ``"full"``, ``"adapter"`` or ``"merged"``.
    """
    if not entries:
        raise ValueError("build_model_card: `entries` is empty; unlearn at least once before writing a card.")
    latest = entries[-1]
    env = latest.get("environment") or {}
    variant = variant or latest.get("checkpoint_format") or "full"
    if variant not in _VARIANTS:
        raise ValueError(f"`variant` must be one of {sorted(_VARIANTS)}, got {variant!r}.")
    base_model = base_model or latest.get("base_model")
    task_type = task_type or latest.get("task_type") or "other"
    if parent is None and latest.get("parent_checkpoint"):
        origin = str(latest["parent_checkpoint"])
        name = f"local checkpoint `{origin}`" if latest.get("parent_checkpoint_local") else f"`{origin}`"
        parent = {"name": name, "sha256": latest.get("parent_checkpoint_sha256")}
    card_data = _card_data(entries, model_name, base_model, variant, _eval_results(latest, task_type, evaluation), ledger_name)
    return ModelCard.from_template(
        card_data,
        template_path=str(template or template_path()),
        model_name=model_name,
        base_model_text=_base_model_text(base_model, variant),
        parent=parent,
        variant_text=_VARIANTS[variant],
        child_sha256=latest.get("child_checkpoint_sha256"),
        library_name=card_data.library_name,
        latest=latest,
        scheme=_SCHEMES.get(scheme_of(latest), scheme_of(latest)),
        keyed=any(scheme_of(e) != "sha256" for e in entries),
        dataset=latest.get("dataset"),
        training_text=training_text(latest.get("training")),
        **_request_section(latest),
        **_evaluation_section(evaluation or {}),
        cost=_cost(latest.get("metrics") or {}),
        hardware=hardware or env.get("hardware") or "unknown",
        versions=sorted((versions or env.get("versions") or {}).items()),
        requests=[_request_row(e) for e in entries],
        ledger_name=ledger_name,
        ledger_head=latest.get("entry_sha256"),
    )


def _card_data(entries: Sequence[Mapping[str, Any]], model_name: str, base_model: str | None, variant: str,
               eval_results: list[EvalResult], ledger_name: str) -> ModelCardData:
    latest = entries[-1]
    keyed = scheme_of(latest) != "sha256"
    dataset = latest.get("dataset")
    local_base = base_model if base_model and not is_hub_id(base_model) else None
    return ModelCardData(
        base_model=base_model if base_model and not local_base else None,  # the Hub accepts model ids only
        datasets=[str(dataset)] if dataset else None,
        library_name="peft" if variant == "adapter" else "transformers",
        tags=list(CARD_TAGS) + (["peft", "lora"] if variant in ("adapter", "merged") else []),
        model_name=model_name,
        eval_results=eval_results or None,
        unlearning={
            "method": str(latest.get("method") or "iau"),
            "paper": PAPER,
            "requests": len(entries),
            "forget_size": int(latest.get("forget_size", 0)),
            # a keyed fingerprint is an HMAC, not a plain sha256 of the ids: its name says so
            ("forget_hmac_sha256" if keyed else "forget_sha256"): latest.get("forget_fingerprint"),
            "forget_fingerprint_scheme": scheme_of(latest),
            "total_forget_size": int(sum(int(e.get("forget_size", 0)) for e in entries)),
            **({"base_model_origin": local_base} if local_base else {}),  # a local origin (not a Hub id)
            "weights_sha256": latest.get("child_checkpoint_sha256"),
            "ledger": ledger_name,
            "ledger_head": latest.get("entry_sha256"),
        },
    )


def _base_model_text(base_model: str | None, variant: str) -> str:
    if base_model and is_hub_id(base_model):
        return f"[{base_model}](https://huggingface.co/{base_model})"
    if base_model:
        return f"local checkpoint `{base_model}` (recorded origin; not a Hub id)"
    if variant == "adapter":
        return "not recorded: the base model was built in memory, so this adapter names no base to load it on"
    return "none recorded (model built in memory)"


def _request_section(latest: Mapping[str, Any]) -> dict[str, Any]:
    config = {_OLD_CONFIG_NAMES.get(k, k): v for k, v in (latest.get("config") or {}).items()}
    retain_n = config.get("unlearn_retain_sample_size")
    sample = "the whole retain set in every step" if retain_n in (None, 0) else f"a seeded sample of {retain_n} per step"
    return {
        "retain_text": f"{latest.get('retain_size')} examples disjoint from the forget set; the retain term used {sample}",
        "hyperparameters": [(label, _param(config.get(key)) if key != "unlearn_retain_sample_size" or retain_n else "whole set")
                            for key, label in _HYPERPARAMETERS if key in config],
        "metric_rows": _metric_rows(latest.get("metrics") or {}),
    }


def _evaluation_section(evaluation: Mapping[str, Any]) -> dict[str, Any]:
    models, rows = _evaluation_rows(evaluation)
    return {"retrain_models": models, "retrain_rows": rows}


def _cost(metrics: Mapping[str, Any]) -> dict[str, str]:
    grad = _num(metrics.get("example_gradient_passes")) or 0.0
    fwd = _num(metrics.get("example_forward_passes")) or 0.0
    wall = _num(metrics.get("wall_time_s"))
    retrain, share = _num(metrics.get("retrain_passes_estimate")), _num(metrics.get("passes_vs_retrain"))
    return {
        "wall_time": "unknown" if wall is None else f"{wall:.3f} s",
        "examples": f"{int(grad + fwd):,}",
        "gradient_passes": f"{int(grad):,}",
        "forward_passes": f"{int(fwd):,}",
        "vs_retrain": None if retrain is None or share is None else
        f"{100 * share:.1f}% of retraining's {int(retrain):,} example-gradient passes (this config's schedule on the retained rows)",
    }


def _request_row(e: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "index": e.get("index"),
        "time_utc": e.get("time_utc"),
        "request_id": str(e.get("request_id", ""))[:16],
        "forget_size": e.get("forget_size"),
        "forget_fingerprint": e.get("forget_fingerprint"),
        "scheme": _SCHEMES.get(scheme_of(e), scheme_of(e)),
        "child": (e.get("child_checkpoint_sha256") or "")[:16] or None,
    }
