"""One call that measures an unlearned model against the original and the retrained (gold) model.

``evaluate_unlearning`` runs every model once over the forget set, a sample of the retain set and
the test set, and reports utility (loss, accuracy, perplexity), removal (forget metrics and
membership-inference AUCs, members = forget, non-members = test) and fidelity (gap to the
retrained model, KL/JS divergence to its predictions). Reports hold aggregates only: never text,
pixels, token ids or row ids of the forget set (its ids enter only as a sha256 fingerprint).

LLM defaults follow what people compare with: open-unlearning's token convention, TOFU's 200 new
tokens for generated answers, PrivLeak on the Min-K% (k = 0.4) AUC against the retrained model,
TOFU's 9-part model utility when its data is given ("reduced (k parts)" otherwise). Every number's
convention is recorded in ``info["conventions"]`` and printed under the Markdown table.
"""

from __future__ import annotations

import inspect
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from .data import fingerprint_ids
from .losses import base_model_of, batch_losses, loss_kind
from .metrics.fidelity import causal_lm_mask, gap_to_retrain, kl_js_per_position
from .metrics.llm import (
    TOFU_MAX_NEW_TOKENS,
    answer_probability,
    answer_rouge,
    exact_memorisation,
    extraction_strength,
    greedy_continuations,
    ks_test,
    lm_example_stats,
    model_utility,
    nanmean,
    option_probability,
    privleak,
    rouge_l_recall,
    truth_ratio,
    truth_ratio_score,
    utility_label,
)
from .metrics.mia import (
    DEFAULT_CONVENTION,
    DEFAULT_MIN_K,
    IGNORE_INDEX,
    loss_scores,
    min_k_plus_plus_scores,
    min_k_scores,
    reference_scores,
    resolve_convention,
    roc_auc,
    shadow_attack_scores,
    shadow_features,
    token_log_probs,
    zlib_length,
    zlib_scores,
    zlib_token_ids,
)
from .metrics.utility import accuracy, mean_loss, perplexity

MODEL_ORDER = ("original", "unlearned", "retrained")
SPLITS = ("forget", "retain", "test")
ATTACKS = ("loss", "zlib", "min_k", "min_k_plus_plus", "reference", "shadow")
_LABEL_COLUMNS = {"labels", "label", "label_ids"}
MIN_SPLIT_ROWS = 50  # fewer forget or test rows: AUCs, KS tests and means are too noisy to read
UTILITY_SETS = ("real_authors", "world_facts")  # TOFU's utility sets besides the retain set


# --------------------------------------------------------------------------- report object


def _json_float(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


@dataclass
class UnlearningReport:
    """Result of :func:`evaluate_unlearning`.

    ``metrics``: flat ``{"<model>/<metric>": float}`` plus ``"gap_to_retrain"`` (the unlearned
    model's); ``info``: counts, settings, forget-set fingerprint, warnings; ``scores``: per-example
    MIA scores (``scores[model][attack]["forget"|"test"]``), kept in memory for plots, never saved.
    """

    metrics: dict[str, float]
    info: dict[str, Any] = field(default_factory=dict)
    scores: dict[str, dict[str, dict[str, np.ndarray]]] = field(default_factory=dict, repr=False)

    @property
    def models(self) -> list[str]:
        """Models present in the report, in the order original, unlearned, retrained."""
        return [m for m in MODEL_ORDER if any(k.startswith(m + "/") for k in self.metrics)]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: ``{"metrics": ..., "info": ...}``; non-finite values become ``None``."""
        return {"metrics": {k: _json_float(v) for k, v in self.metrics.items()}, "info": self.info}

    def _rows(self) -> list[tuple[str, str]]:
        rows: list[tuple[str, str]] = []
        for split in SPLITS:
            for metric in ("loss", "accuracy", "perplexity", "probability", "exact_memorisation",
                           "extraction_strength", "rouge_l_recall", "truth_ratio"):
                rows.append((f"{split}_{metric}", f"{split} {metric.replace('_', ' ')}"))
        for name in UTILITY_SETS:
            for metric in ("probability", "rouge_l_recall", "truth_ratio"):
                rows.append((f"{name}_{metric}", f"{name.replace('_', ' ')} {metric.replace('_', ' ')}"))
        for attack in self.info.get("attacks", []):
            rows.append((f"mia_{attack}_auc", f"MIA AUC ({attack})"))
        rows += [("forget_quality", "forget quality (KS p-value)"), ("forget_ks_distance", "forget KS distance"),
                 ("privleak", "PrivLeak (%)"), ("model_utility", "model utility")]
        for split in SPLITS:
            rows.append((f"kl_to_retrained_{split}", f"KL to retrained ({split})"))
            rows.append((f"js_to_retrained_{split}", f"JS to retrained ({split})"))
        rows.append(("gap_to_retrain", "gap to retrain"))
        models = self.models
        return [r for r in rows if any(f"{m}/{r[0]}" in self.metrics for m in models)]

    def to_markdown(self) -> str:
        """A Markdown table: rows = metrics, columns = original, unlearned, retrained."""
        models = self.models
        info = self.info
        lines = [
            "# Unlearning report",
            "",
            f"**Verdict:** {info['verdict']}" if info.get("verdict") else "",
            "",
            f"Task: `{info.get('task', '?')}` · evaluated examples: forget {info.get('n_forget', '?')}, "
            f"retain {info.get('n_retain', '?')} (sample of {info.get('n_retain_total', '?')}), "
            f"test {info.get('n_test', '?')} · seed {info.get('seed', '?')}",
            "",
            "| metric | " + " | ".join(models) + " |",
            "|---|" + "---:|" * len(models),
        ]
        for key, label in self._rows():
            cells = []
            for m in models:
                v = self.metrics.get(f"{m}/{key}")
                cells.append("–" if v is None else ("nan" if math.isnan(v) else f"{v:.4f}"))
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        gap_keys = info.get("gap_keys")
        lines += [
            "",
            "MIA: members = forget set, non-members = test set; after exact unlearning the target is the "
            "retrained model's AUC, not 0.5.",
        ]
        if gap_keys:
            lines.append(f"Gap to retrain = mean |Δ| vs the retrained model over {', '.join(gap_keys)}.")
        if any("kl_to_retrained" in k for k in self.metrics):
            lines.append("KL/JS: KL(P_retrained ‖ P_model) and Jensen-Shannon divergence in nats, "
                         "averaged over examples (classifiers) or predicted tokens (LMs).")
        if info.get("conventions"):
            lines += ["", "**Conventions**", ""] + [f"- {k.replace('_', ' ')}: {v}" for k, v in info["conventions"].items()]
        if any(info.get("skipped_rows", {}).values()):
            lines.append("Rows without a labelled token, skipped by per-example metrics: "
                         + ", ".join(f"{k} {v}" for k, v in info["skipped_rows"].items()) + ".")
        if info.get("skipped_attacks"):
            lines.append("Skipped attacks: " + "; ".join(f"{k} ({v})" for k, v in info["skipped_attacks"].items()) + ".")
        if info.get("warnings"):
            lines += ["", "**Warnings**", ""] + [f"- {w}" for w in info["warnings"]]
        return "\n".join(lines) + "\n"

    def summary(self) -> dict[str, Any]:
        """What a person reads first: ``{"verdict": str, "warnings": [...], "<model>": {metric: value}}`` with
        forget quality (KS p-value, distance, n), model utility, PrivLeak, the first attack's AUC, test loss /
        accuracy and the gap to retrain, for each model present (missing metrics left out)."""
        keys = ["forget_quality", "forget_ks_distance", "forget_ks_n", "model_utility", "privleak",
                *(f"mia_{a}_auc" for a in self.info.get("attacks", [])[:1]), "forget_loss", "test_loss",
                "forget_accuracy", "test_accuracy", "gap_to_retrain"]
        out: dict[str, Any] = {"verdict": self.info.get("verdict", ""), "warnings": list(self.info.get("warnings", []))}
        for m in self.models:
            out[m] = {k: self.metrics[f"{m}/{k}"] for k in keys if f"{m}/{k}" in self.metrics}
        return out

    def plot(self, path: str | Path) -> None:
        """Write a PNG: MIA score histograms (forget vs test) per attack and model, labelled with the side
        that means "member" and the retrained model's AUC, and a bar chart with the retrained values marked."""
        from matplotlib.figure import Figure  # Agg canvas, no pyplot global state

        models = self.models
        attacks = [a for a in self.info.get("attacks", []) if any(a in self.scores.get(m, {}) for m in models)]
        n_cols = max(1, len(models))
        n_rows = len(attacks) + 1
        fig = Figure(figsize=(4 * n_cols, 2.6 * n_rows + 0.6), layout="constrained")
        grid = fig.add_gridspec(n_rows, n_cols)
        for r, attack in enumerate(attacks):
            for c, model in enumerate(models):
                ax = fig.add_subplot(grid[r, c])
                s = self.scores.get(model, {}).get(attack)
                if s is None:
                    ax.set_axis_off()
                    continue
                values = {k: np.asarray(s[k], dtype=np.float64) for k in ("forget", "test")}
                values = {k: v[np.isfinite(v)] for k, v in values.items()}
                both = np.concatenate(list(values.values()))
                edges = np.histogram_bin_edges(both, bins=20) if both.size else 20
                for split, color in (("forget", "tab:red"), ("test", "tab:blue")):
                    if values[split].size:
                        ax.hist(values[split], bins=edges, alpha=0.5, color=color,
                                label=f"{split} ({'members' if split == 'forget' else 'non-members'})")
                auc = self.metrics.get(f"{model}/mia_{attack}_auc", float("nan"))
                gold = self.metrics.get(f"retrained/mia_{attack}_auc")
                ax.set_title(f"{model} · {attack}: AUC {auc:.2f}" + (f" (retrained {gold:.2f})" if gold is not None else ""),
                             fontsize=9)
                ax.set_xlabel(f"{attack} score (higher → more likely member)", fontsize=7)
                ax.set_ylabel("examples", fontsize=7)
                ax.tick_params(labelsize=7)
                if r == 0 and c == 0:
                    ax.legend(fontsize=7)
        ax = fig.add_subplot(grid[-1, :])
        keys = [k for k in ("forget_accuracy", "retain_accuracy", "test_accuracy") if any(f"{m}/{k}" in self.metrics for m in models)]
        if not keys:
            keys = [k for k in ("forget_loss", "retain_loss", "test_loss") if any(f"{m}/{k}" in self.metrics for m in models)]
        keys += [f"mia_{a}_auc" for a in self.info.get("attacks", [])]
        width = 0.8 / max(1, len(models))
        x = np.arange(len(keys))
        for i, model in enumerate(models):
            vals = [self.metrics.get(f"{model}/{k}", float("nan")) for k in keys]
            ax.bar(x + (i - (len(models) - 1) / 2) * width, vals, width, label=model)
        if "retrained" in models:
            gold = [self.metrics.get(f"retrained/{k}", float("nan")) for k in keys]
            ax.hlines(gold, x - 0.45, x + 0.45, colors="black", linestyles="dashed", label="retrained (target)")
        ax.set_xticks(x, [k.replace("_", " ") for k in keys], rotation=20, fontsize=8)
        ax.set_ylabel("value (the retrained model's is the target)", fontsize=8)
        gap = self.metrics.get("gap_to_retrain")
        ax.set_title("metrics vs retrain" + (f" (gap to retrain {gap:.3f})" if gap is not None else ""), fontsize=10)
        ax.legend(fontsize=8)
        fig.savefig(path, dpi=100)

    def save(self, output_dir: str | Path) -> dict[str, str]:
        """Write ``report.json``, ``report.md`` and ``report.png`` to ``output_dir``; return their paths."""
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"json": out / "report.json", "markdown": out / "report.md", "png": out / "report.png"}
        paths["json"].write_text(json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n")
        paths["markdown"].write_text(self.to_markdown())
        self.plot(paths["png"])
        return {k: str(v) for k, v in paths.items()}


# --------------------------------------------------------------------------- data plumbing


def _input_columns(model: torch.nn.Module) -> set[str]:
    params = inspect.signature(base_model_of(model).forward).parameters.values()
    named = {p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    return named | _LABEL_COLUMNS


def _model_inputs_only(dataset, columns: set[str]):
    drop = [c for c in dataset.column_names if c not in columns]
    return dataset.remove_columns(drop) if drop else dataset


def _sample_indices(size: int, n: int | None, rng: np.random.Generator) -> list[int] | None:
    """Sorted seeded sample of ``n`` row indices, or None for all rows."""
    if n is None or n >= size:
        return None
    return np.sort(rng.choice(size, size=n, replace=False)).tolist()


def _select(dataset, idx: list[int] | None):
    return dataset if idx is None else dataset.select(idx)


def _sample(dataset, n: int | None, rng: np.random.Generator):
    return _select(dataset, _sample_indices(len(dataset), n, rng))


def _device(model: torch.nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def _to(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}


def _is_peft(model: torch.nn.Module) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


class _Collected:
    """Per-example quantities of one model on one split (lists of numpy arrays, concatenated on read)."""

    def __init__(self) -> None:
        self.parts: dict[str, list[np.ndarray]] = {}
        self.kl_sum = 0.0
        self.js_sum = 0.0
        self.n_positions = 0

    def add(self, name: str, value: np.ndarray | torch.Tensor) -> None:
        if torch.is_tensor(value):
            value = value.detach().double().cpu().numpy()
        self.parts.setdefault(name, []).append(np.asarray(value, dtype=np.float64))

    def get(self, name: str) -> np.ndarray | None:
        parts = self.parts.get(name)
        return np.concatenate(parts) if parts else None


@torch.no_grad()
def _run_split(
    models: dict[str, torch.nn.Module],
    dataset,
    *,
    kind: str,
    data_collator: Callable,
    batch_size: int,
    attacks: set[str],
    tokenizer,
    reference: Callable[[dict[str, Any]], torch.Tensor] | None,
    k: float,
    convention: str = "hf_iau",
) -> tuple[dict[str, _Collected], np.ndarray | None, np.ndarray | None]:
    """One pass of every model over ``dataset``; returns per-model collections, zlib lengths, reference losses."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=data_collator)
    got = {name: _Collected() for name in models}
    zlens: list[int] = []
    ref_losses: list[np.ndarray] = []
    for batch in loader:
        logits: dict[str, torch.Tensor] = {}
        labels = batch["labels"] if "labels" in batch else None
        for name, model in models.items():
            b = _to(batch, _device(model))
            bl = batch_losses(model, b, kind)
            c = got[name]
            c.add("loss", bl.per_example)
            c.add("count", bl.count)
            if bl.correct is not None:
                c.add("correct", bl.correct)
            if kind == "causal_lm" and attacks & {"min_k", "min_k_plus_plus"}:
                stats = token_log_probs(bl.logits, b["labels"], b.get("input_ids"), convention)
                c.add("min_k", min_k_scores(stats, k))
                c.add("min_k_plus_plus", min_k_plus_plus_scores(stats, k))
            if kind == "causal_lm":
                c.add("exact_memorisation", exact_memorisation(bl.logits, b["labels"], b.get("input_ids"), convention))
                c.add("extraction_strength", extraction_strength(bl.logits, b["labels"], b.get("input_ids"), convention))
            if kind == "classification" and "shadow" in attacks:
                c.add("shadow_features", shadow_features(bl.logits.detach().cpu(), b["labels"].cpu()))
            if bl.logits is not None and "retrained" in models:
                logits[name] = bl.logits.detach()
        if "retrained" in logits:
            gold = logits["retrained"]
            for name, lg in logits.items():
                if name == "retrained":
                    continue
                if kind == "causal_lm":
                    mask = causal_lm_mask(labels.to(gold.device))
                    kl, js = kl_js_per_position(gold[:, :-1][mask], lg.to(gold.device)[:, :-1][mask])
                else:
                    kl, js = kl_js_per_position(gold, lg.to(gold.device))
                got[name].kl_sum += float(kl.sum())
                got[name].js_sum += float(js.sum())
                got[name].n_positions += int(kl.numel())
        if "zlib" in attacks:
            # the loss's tokens only (the answer, never the prompt); the decoded text lives only
            # inside this expression: its compressed length is kept
            for row in zlib_token_ids(batch["labels"], convention):
                zlens.append(zlib_length(tokenizer.decode(row, skip_special_tokens=True)))
        if reference is not None:
            ref_losses.append(reference(batch).detach().double().cpu().numpy())
    z = np.asarray(zlens, dtype=np.float64) if zlens else None
    r = np.concatenate(ref_losses) if ref_losses else None
    return got, z, r


# --------------------------------------------------------------------------- main entry point


# Longer than 80 lines for a stated reason: 28 keyword arguments (public API, each documented below); the body is
# a sequence of calls to the helpers that follow.
def evaluate_unlearning(
    unlearned: torch.nn.Module,
    original: torch.nn.Module | None = None,
    retrained: torch.nn.Module | None = None,
    *,
    forget,
    retain,
    test,
    data_collator: Callable | None = None,
    batch_size: int = 32,
    tokenizer=None,
    output_dir: str | Path | None = None,
    mia: Sequence[str] = ATTACKS,
    max_examples: int | None = None,
    seed: int = 0,
    reference_model: torch.nn.Module | None = None,
    retain_sample_size: int | None = None,
    min_k_fraction: float = DEFAULT_MIN_K,
    id_column: str = "id",
    token_convention: str = DEFAULT_CONVENTION,
    question_column: str = "question",
    answer_column: str = "answer",
    rouge_max_new_tokens: int = TOFU_MAX_NEW_TOKENS,
    truth_ratio_data: Mapping[str, tuple[Any, Sequence[Any]]] | None = None,
    utility_data: Mapping[str, Any] | None = None,
    perturbed_column: str = "perturbed_answer",
    wall_times: Mapping[str, float] | None = None,
    mia_convention: str | None = None,
) -> UnlearningReport:
    """Evaluate ``unlearned`` (and ``original`` / ``retrained`` when given) in one call.

    Each model runs once over ``forget``, a seeded sample of ``retain`` (``retain_sample_size``
    rows; default as many as the larger of forget and test) and ``test``; each split is first
    capped at ``max_examples`` rows (seeded). Columns the model's forward does not accept (e.g.
    ``id``, ``text``) are dropped before ``data_collator`` (default ``default_data_collator``).

    ``mia`` picks attacks among ``ATTACKS``; those that do not apply are skipped and listed in
    ``info["skipped_attacks"]``: ``zlib`` (causal LMs, needs ``tokenizer``), ``min_k`` and
    ``min_k_plus_plus`` (causal LMs, fraction ``min_k_fraction``), ``reference`` (needs
    ``reference_model``; for a peft ``unlearned`` model, defaults to it with the adapter
    disabled), ``shadow`` (classifiers: attack fitted on retain vs half the test set, scored on
    forget vs the other half). Writes the report to ``output_dir`` when given.

    Causal LMs (per-token quantities over the labelled tokens only, so prompt-masked QA data is
    scored on its answers): a row with no labelled token is skipped by every per-example metric
    and counted in ``info["skipped_rows"]``. ``token_convention`` picks the token set of Min-K%,
    Min-K%++, ZLib, exact memorisation and extraction strength: ``"open_unlearning"`` (default) or
    ``"muse"`` (MUSE's original code; see :mod:`hf_iau.metrics.llm`). Added per model:
    ``<split>_probability``, ``<split>_exact_memorisation``, ``<split>_extraction_strength``;
    ``<split>_rouge_l_recall`` of greedy answers (up to ``rouge_max_new_tokens``, TOFU's 200; 0
    disables) when a ``tokenizer`` is given: questions and answers from ``question_column`` /
    ``answer_column`` when the split has them, else from the prompt-masked tokens (prompt = the
    unlabelled prefix); ``<split>_truth_ratio`` when ``truth_ratio_data[split] = (paraphrased,
    [perturbed, ...])`` gives prompt-masked examples aligned row by row with that split;
    ``utility_data={"real_authors": qa, "world_facts": qa}`` (question/answer text columns and a
    list column ``perturbed_column`` of wrong answers) adds ``<set>_probability`` (the answer's
    probability among the options), ``<set>_rouge_l_recall`` and ``<set>_truth_ratio``;
    ``model_utility`` is the harmonic mean of TOFU's 9 parts when all are present, else of those
    present, labelled "reduced (k parts)". With ``retrained``: ``forget_quality`` (KS p-value on the
    forget set's truth ratios, else its per-example losses) with ``forget_ks_distance`` and
    ``forget_ks_n``, and ``privleak`` (MUSE, on the Min-K% AUC, else the first attack's).
    ``wall_times`` (seconds per model name) adds the cost to the verdict (``info["verdict"]``).
    ``mia_convention`` is the old name of ``token_convention`` (FutureWarning).
    """
    from transformers import default_data_collator

    if mia_convention is not None:
        warnings.warn("evaluate_unlearning(mia_convention=...) is renamed token_convention; the old name goes in "
                      "the next release.", FutureWarning, stacklevel=2)
        token_convention = mia_convention
    token_convention = resolve_convention(token_convention, "token_convention")
    _check_inputs(mia, utility_data, truth_ratio_data, {"forget": len(forget), "retain": len(retain), "test": len(test)})
    given = {"original": original, "unlearned": unlearned, "retrained": retrained}
    models = {name: given[name] for name in MODEL_ORDER if given[name] is not None}
    kind = loss_kind(unlearned)
    for name, model in models.items():
        if loss_kind(model) != kind:
            raise ValueError(f"{name} model is a {loss_kind(model)} model, unlearned is {kind}")

    info: dict[str, Any] = {"task": kind, "seed": seed, "n_forget_total": len(forget), "n_retain_total": len(retain),
                            "n_test_total": len(test)}
    if id_column in forget.column_names:
        info["forget_fingerprint"] = fingerprint_ids(forget[id_column])
    picked, raw = _pick_rows(forget, retain, test, max_examples, retain_sample_size, seed)
    columns = set.intersection(*(_input_columns(m) for m in models.values()))
    data = {s: _model_inputs_only(raw[s], columns) for s in SPLITS}
    info.update(n_forget=len(raw["forget"]), n_retain=len(raw["retain"]), n_test=len(raw["test"]))
    attacks, skipped = _pick_attacks(mia, kind, batch_size=batch_size, tokenizer=tokenizer, n_retain=len(raw["retain"]),
                                     n_test=len(raw["test"]), has_reference=reference_model is not None or _is_peft(unlearned))
    info["attacks"] = attacks
    if skipped:
        info["skipped_attacks"] = skipped
    if "min_k" in attacks or "min_k_plus_plus" in attacks:
        info["min_k_fraction"] = min_k_fraction
    if kind == "causal_lm":
        info["token_convention"] = token_convention
    reference = None
    if "reference" in attacks:
        reference, info["reference_model"] = _reference_fn(reference_model, unlearned, kind)
    runs = _run_all(models, reference_model, data, kind=kind, data_collator=data_collator or default_data_collator,
                    batch_size=batch_size, attacks=attacks, tokenizer=tokenizer, reference=reference, k=min_k_fraction,
                    convention=token_convention)

    # rows with no labelled token (causal LM): skipped by every per-example metric, counted
    valid: dict[str, np.ndarray] = {}
    if kind == "causal_lm":
        first = next(iter(models))
        valid = {s: runs[s][0][first].get("count") > 0 for s in SPLITS if runs[s][0][first].get("count") is not None}
        info["skipped_rows"] = {split: int((~v).sum()) for split, v in valid.items()}

    def keep(split: str, values: np.ndarray | None) -> np.ndarray | None:
        return values[valid[split]] if values is not None and split in valid else values

    per_model: dict[str, dict[str, float]] = {}
    scores: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    for name in models:
        per_model[name] = {k: v for s in SPLITS for k, v in _split_metrics(runs[s][0][name], s, kind, keep).items()}
        scores[name] = {}
        for a in attacks:
            pair = _attack_pair(a, name, runs, seed)
            scores[name][a] = {"forget": keep("forget", pair[0]), "test": keep("test", pair[1])}
            per_model[name][f"mia_{a}_auc"] = roc_auc(scores[name][a]["forget"], scores[name][a]["test"])
    if kind == "causal_lm":
        _llm_metrics(
            per_model, models, runs, raw, picked, keep, info, attacks=attacks, tokenizer=tokenizer,
            batch_size=batch_size, convention=token_convention, question_column=question_column,
            answer_column=answer_column, max_new_tokens=rouge_max_new_tokens, truth_ratio_data=truth_ratio_data,
            utility_data=utility_data, perturbed_column=perturbed_column,
        )
    _gap(per_model, attacks, info)
    metrics = {f"{name}/{k}": float(v) for name, m in per_model.items() for k, v in m.items()}
    if "unlearned/gap_to_retrain" in metrics:
        metrics["gap_to_retrain"] = metrics["unlearned/gap_to_retrain"]
    info["warnings"] = _warnings(per_model, kind, unlearned) + _size_warnings(info)
    info["conventions"] = _conventions(info, kind, min_k_fraction)
    info["verdict"] = verdict(per_model, info, wall_times)
    if "shadow" in attacks:
        info["shadow_attack"] = "logistic regression on sorted softmax + loss; fit: retain vs half of test; scored: forget vs other half"
    report = UnlearningReport(metrics=metrics, info=info, scores=scores)
    if output_dir is not None:
        report.save(output_dir)
    return report


def _check_inputs(mia: Sequence[str], utility_data, truth_ratio_data, n_rows: dict[str, int]) -> None:
    """Errors naming the argument: unknown attacks or utility sets, truth-ratio data not aligned with its split."""
    unknown_sets = set(utility_data or {}) - set(UTILITY_SETS)
    if unknown_sets:
        raise ValueError(f"utility_data: unknown set(s) {sorted(unknown_sets)}; use {', '.join(UTILITY_SETS)}")
    for split, pair in (truth_ratio_data or {}).items():
        if split not in SPLITS:
            raise ValueError(f"truth_ratio_data: unknown split {split!r}; use one of {', '.join(SPLITS)}")
        para, perturbed = pair
        sizes = [len(para)] + [len(d) for d in perturbed]
        if not perturbed or any(n != n_rows[split] for n in sizes):
            raise ValueError(
                f"truth_ratio_data[{split!r}] must be (paraphrased, [perturbed, ...]) with one row per {split} row "
                f"({n_rows[split]}); got sizes {sizes}"
            )
    unknown = set(mia) - set(ATTACKS)
    if unknown:
        raise ValueError(f"unknown MIA attack(s) {sorted(unknown)}; available: {', '.join(ATTACKS)}")


def _pick_rows(forget, retain, test, max_examples: int | None, retain_sample_size: int | None, seed: int):
    """(picked row indices, selected rows) per split: forget and test capped at ``max_examples``, a seeded retain
    sample of ``retain_sample_size`` rows (default: as many as the larger of the two)."""
    rng = np.random.default_rng(seed)
    picked: dict[str, list[int] | None] = {"forget": _sample_indices(len(forget), max_examples, rng)}
    picked["test"] = _sample_indices(len(test), max_examples, rng)
    forget_s, test_s = _select(forget, picked["forget"]), _select(test, picked["test"])
    n_retain = retain_sample_size if retain_sample_size is not None else max(len(forget_s), len(test_s))
    if max_examples is not None:
        n_retain = min(n_retain, max_examples)
    picked["retain"] = _sample_indices(len(retain), n_retain, rng)
    return picked, {"forget": forget_s, "retain": _select(retain, picked["retain"]), "test": test_s}


def _pick_attacks(mia: Sequence[str], kind: str, *, batch_size: int, tokenizer, n_retain: int, n_test: int,
                  has_reference: bool) -> tuple[list[str], dict[str, str]]:
    """(attacks that apply, {skipped attack: why})."""
    skipped: dict[str, str] = {}
    attacks: list[str] = []
    for a in mia:
        if a in attacks:
            continue
        if kind == "generic" and batch_size != 1:
            skipped[a] = "model without per-example loss (use batch_size=1)"
        elif a in ("zlib", "min_k", "min_k_plus_plus") and kind != "causal_lm":
            skipped[a] = "causal LMs only"
        elif a == "zlib" and tokenizer is None:
            skipped[a] = "needs `tokenizer`"
        elif a == "shadow" and kind != "classification":
            skipped[a] = "classifiers only"
        elif a == "shadow" and (n_retain < 2 or n_test < 4):
            skipped[a] = "needs at least 2 retain and 4 test examples"
        elif a == "reference" and not has_reference:
            skipped[a] = "needs `reference_model`"
        else:
            attacks.append(a)
    return attacks, skipped


def _reference_fn(ref_model, unlearned, kind: str) -> tuple[Callable[[dict[str, Any]], torch.Tensor], str]:
    """(per-example reference loss of a batch, what the reference is): the given model, else the peft
    ``unlearned`` model with its adapter disabled."""
    if ref_model is not None:
        return (lambda batch: batch_losses(ref_model, _to(batch, _device(ref_model)), kind).per_example), "given"

    def reference(batch: dict[str, Any]) -> torch.Tensor:
        with unlearned.disable_adapter():
            return batch_losses(unlearned, _to(batch, _device(unlearned)), kind).per_example

    return reference, "unlearned model with its adapter disabled"


def _run_all(models, ref_model, data, *, attacks: list[str], reference, **kwargs: Any) -> dict[str, Any]:
    """:func:`_run_split` of every split with every model (and the reference model) in eval mode, modes restored."""
    modes = {name: m.training for name, m in models.items()}
    if ref_model is not None:
        modes["__reference__"] = ref_model.training
        ref_model.eval()
    for m in models.values():
        m.eval()
    try:
        return {
            split: _run_split(models, data[split], attacks=set(attacks) if split != "retain" else set(attacks) & {"shadow"},
                              reference=reference if split != "retain" else None, **kwargs)
            for split in SPLITS
        }
    finally:
        for name, m in models.items():
            m.train(modes[name])
        if ref_model is not None:
            ref_model.train(modes["__reference__"])


def _split_metrics(c: _Collected, split: str, kind: str, keep: Callable) -> dict[str, float]:
    """Loss, accuracy, perplexity, answer probability, EM, ES and KL/JS to the retrained model of one split."""
    m: dict[str, float] = {}
    loss, count = c.get("loss"), c.get("count")
    if loss is None:
        return m
    m[f"{split}_loss"] = mean_loss(loss, count)
    if c.get("correct") is not None:
        m[f"{split}_accuracy"] = accuracy(c.get("correct"), count)
    if kind == "causal_lm":
        m[f"{split}_perplexity"] = perplexity(loss, count)
        m[f"{split}_probability"] = nanmean(answer_probability(keep(split, loss)))
        for key in ("exact_memorisation", "extraction_strength"):
            m[f"{split}_{key}"] = nanmean(keep(split, c.get(key)))
    if c.n_positions:
        m[f"kl_to_retrained_{split}"] = c.kl_sum / c.n_positions
        m[f"js_to_retrained_{split}"] = c.js_sum / c.n_positions
    return m


def _attack_pair(a: str, name: str, runs: dict[str, Any], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(forget scores, test scores) of attack ``a`` on model ``name`` (higher = member)."""
    fc, tc = runs["forget"][0][name], runs["test"][0][name]
    if a == "loss":
        return loss_scores(fc.get("loss")), loss_scores(tc.get("loss"))
    if a == "zlib":
        return zlib_scores(fc.get("loss"), runs["forget"][1]), zlib_scores(tc.get("loss"), runs["test"][1])
    if a in ("min_k", "min_k_plus_plus"):
        return fc.get(a), tc.get(a)
    if a == "reference":
        return reference_scores(fc.get("loss"), runs["forget"][2]), reference_scores(tc.get("loss"), runs["test"][2])
    members = runs["retain"][0][name].get("shadow_features")  # shadow
    test_feats = tc.get("shadow_features")
    order = np.random.default_rng(seed).permutation(len(test_feats))
    fit, held = order[: len(order) // 2], order[len(order) // 2 :]
    scored = shadow_attack_scores(members, test_feats[fit], np.concatenate([fc.get("shadow_features"), test_feats[held]]),
                                  seed=seed)
    return scored[: len(fc.get("loss"))], scored[len(fc.get("loss")) :]


def _gap(per_model: dict[str, dict[str, float]], attacks: list[str], info: dict[str, Any]) -> None:
    """``gap_to_retrain`` of the original and unlearned models: mean |Δ| of forget/test accuracy (else loss) and
    the first attack's AUC against the retrained model's."""
    acc_or_loss = "accuracy" if any(k.endswith("_accuracy") for k in per_model["unlearned"]) else "loss"
    gap_keys = [f"forget_{acc_or_loss}", f"test_{acc_or_loss}"] + ([f"mia_{attacks[0]}_auc"] if attacks else [])
    if "retrained" in per_model:
        info["gap_keys"] = gap_keys
        for name in ("original", "unlearned"):
            if name in per_model:
                per_model[name]["gap_to_retrain"] = gap_to_retrain(per_model[name], per_model["retrained"], gap_keys)


def _qa_prompts(raw, tokenizer, question_column: str, answer_column: str) -> tuple[list[list[int]], list[str], str]:
    """(prompt ids, reference answers, source) of a split for ROUGE: the text columns when present, else the
    prompt-masked tokens (prompt = the unlabelled prefix, reference = the labelled tokens decoded)."""
    from .qa import qa_prompt_ids

    if {question_column, answer_column} <= set(raw.column_names):
        prompts = [qa_prompt_ids(tokenizer, q) for q in raw[question_column]]
        return prompts, list(raw[answer_column]), f"`{question_column}` / `{answer_column}` columns"
    prompts, refs = [], []
    for ids, labels in zip(raw["input_ids"], raw["labels"]):
        first = next((t for t, y in enumerate(labels) if y != IGNORE_INDEX), len(labels))
        prompts.append(list(ids[:first]))
        refs.append(tokenizer.decode([y for y in labels if y != IGNORE_INDEX], skip_special_tokens=True))
    return prompts, refs, "prompt-masked tokens"


def _rouge(per_model, models, raw, info, skipped, *, tokenizer, batch_size, question_column, answer_column,
           max_new_tokens) -> None:
    """``<split>_rouge_l_recall`` of greedy answers (TOFU's ROUGE) for every split that can be prompted."""
    if max_new_tokens <= 0:
        skipped["rouge"] = "rouge_max_new_tokens=0"
        return
    if tokenizer is None:
        skipped["rouge"] = "needs `tokenizer`"
        return
    sources = set()
    for sp in SPLITS:
        d = raw[sp]
        has_text = {question_column, answer_column} <= set(d.column_names)
        if not len(d) or not (has_text or {"input_ids", "labels"} <= set(d.column_names)):
            continue
        prompts, refs, source = _qa_prompts(d, tokenizer, question_column, answer_column)
        # token rows need a prompt and an answer (raw-text rows, labelled from position 0, have no prompt)
        keep = list(range(len(d))) if has_text else [i for i in range(len(d)) if prompts[i] and refs[i].strip()]
        if not keep:
            continue
        sources.add(source)
        for name, model in models.items():
            got = greedy_continuations(model, tokenizer, [prompts[i] for i in keep], max_new_tokens=max_new_tokens,
                                       batch_size=batch_size)
            per_model[name][f"{sp}_rouge_l_recall"] = float(np.mean(rouge_l_recall(got, [refs[i] for i in keep])))
    if sources:
        info["rouge"] = (f"ROUGE-L recall (rouge-score, Porter stemmer) of greedy answers, up to {max_new_tokens} new "
                         f"tokens (TOFU: 200); questions and answers from {' and '.join(sorted(sources))}")
    else:
        skipped["rouge"] = (f"needs `{question_column}` and `{answer_column}` text columns or prompt-masked rows "
                            "(labels -100 on a prompt)")


def _truth_ratios(per_model, models, picked, truth_ratio_data, *, tokenizer, batch_size, convention):
    """``<split>_truth_ratio`` per model; returns the per-row ratios ``{model: {split: R}}``."""
    ratios: dict[str, dict[str, np.ndarray]] = {}
    for sp, (para, perturbed) in (truth_ratio_data or {}).items():
        idx = picked[sp]
        para_s, pert_s = _select(para, idx), [_select(d, idx) for d in perturbed]
        for name, model in models.items():
            def losses(d):
                return lm_example_stats(model, d, tokenizer=tokenizer, batch_size=batch_size, convention=convention)["loss"]

            tr = truth_ratio(losses(para_s), np.stack([losses(d) for d in pert_s], axis=1))
            ratios.setdefault(name, {})[sp] = tr
            per_model[name][f"{sp}_truth_ratio"] = truth_ratio_score(tr, "forget" if sp == "forget" else "retain")
    return ratios


def _utility_sets(per_model, models, utility_data, *, tokenizer, batch_size, convention, question_column,
                  answer_column, perturbed_column, max_new_tokens) -> None:
    """TOFU's real-authors / world-facts parts: option probability (the answer among the perturbed answers
    under the same question), ROUGE-L recall of the greedy answer, truth ratio (answer vs perturbed)."""
    from .qa import qa_truth_ratio_inputs

    for name_set, qa in (utility_data or {}).items():
        if tokenizer is None:
            raise ValueError("utility_data needs `tokenizer` (its rows are question/answer text).")
        for col in (question_column, answer_column, perturbed_column):
            if col not in qa.column_names:
                raise ValueError(f"utility_data[{name_set!r}] has no column {col!r}; pass question_column / "
                                 f"answer_column / perturbed_column (TOFU: question, answer, perturbed_answer).")
        correct, wrong = qa_truth_ratio_inputs(qa, tokenizer, question_column, answer_column, perturbed_column,
                                               id_column=None)
        for name, model in models.items():
            def losses(d):
                return lm_example_stats(model, d, tokenizer=tokenizer, batch_size=batch_size, convention=convention)["loss"]

            lc, lw = losses(correct), np.stack([losses(d) for d in wrong], axis=1)
            m = per_model[name]
            m[f"{name_set}_probability"] = float(np.mean(option_probability(lc, lw)))
            m[f"{name_set}_truth_ratio"] = truth_ratio_score(truth_ratio(lc, lw), "retain")
            if max_new_tokens > 0:
                m[f"{name_set}_rouge_l_recall"] = float(np.mean(answer_rouge(
                    model, tokenizer, qa[question_column], qa[answer_column], max_new_tokens=max_new_tokens,
                    batch_size=batch_size)))


def _llm_metrics(
    per_model: dict[str, dict[str, float]],
    models: dict[str, torch.nn.Module],
    runs: dict[str, Any],
    raw: dict[str, Any],
    picked: dict[str, list[int] | None],
    keep: Callable[[str, np.ndarray | None], np.ndarray | None],
    info: dict[str, Any],
    *,
    attacks: list[str],
    tokenizer,
    batch_size: int,
    convention: str,
    question_column: str,
    answer_column: str,
    max_new_tokens: int,
    truth_ratio_data: Mapping[str, tuple[Any, Sequence[Any]]] | None,
    utility_data: Mapping[str, Any] | None,
    perturbed_column: str,
) -> None:
    """ROUGE, truth ratio, model utility, forget quality and PrivLeak of causal LMs, into ``per_model``."""
    skipped: dict[str, str] = {}
    _rouge(per_model, models, raw, info, skipped, tokenizer=tokenizer, batch_size=batch_size,
           question_column=question_column, answer_column=answer_column, max_new_tokens=max_new_tokens)
    ratios = _truth_ratios(per_model, models, picked, truth_ratio_data, tokenizer=tokenizer, batch_size=batch_size,
                           convention=convention)
    _utility_sets(per_model, models, utility_data, tokenizer=tokenizer, batch_size=batch_size, convention=convention,
                  question_column=question_column, answer_column=answer_column, perturbed_column=perturbed_column,
                  max_new_tokens=max_new_tokens)
    if truth_ratio_data or utility_data:
        info["truth_ratio"] = "forget: mean min(R, 1/R); other sets: mean max(0, 1 − R)"
    parts = [f"{s}_{m}" for s in ("retain", *UTILITY_SETS) for m in ("probability", "rouge_l_recall", "truth_ratio")]
    utility_keys = [k for k in parts if all(math.isfinite(per_model[n].get(k, math.nan)) for n in models)]
    if utility_keys:
        info["utility_keys"] = utility_keys
        info["model_utility"] = utility_label(utility_keys)
        for name in models:
            per_model[name]["model_utility"] = model_utility([per_model[name][k] for k in utility_keys])
    if "retrained" in models:
        by_tr = all("forget" in ratios.get(n, {}) for n in models)
        info["forget_quality_statistic"] = "truth_ratio" if by_tr else "loss"

        def stat(name: str) -> np.ndarray | None:
            if by_tr:
                return ratios[name]["forget"]
            return keep("forget", runs["forget"][0][name].get("loss"))

        for name in models:
            ks = ks_test(stat(name), stat("retrained"))
            per_model[name].update(forget_quality=ks["p_value"], forget_ks_distance=ks["ks_distance"],
                                   forget_ks_n=ks["n_model"])
        attack = "min_k" if "min_k" in attacks else (attacks[0] if attacks else None)
        if attack is not None:
            info["privleak_attack"] = attack
            ref = per_model["retrained"][f"mia_{attack}_auc"]
            for name in models:
                per_model[name]["privleak"] = privleak(per_model[name][f"mia_{attack}_auc"], ref)
    if skipped:
        info["skipped_metrics"] = skipped


def _size_warnings(info: dict[str, Any]) -> list[str]:
    """A warning for each graded split smaller than ``MIN_SPLIT_ROWS``: too few rows to read an AUC or a KS test."""
    out = []
    for split in ("forget", "test"):
        n = info.get(f"n_{split}")
        if n is not None and n < MIN_SPLIT_ROWS:
            out.append(f"{split} split has only {n} rows (< {MIN_SPLIT_ROWS}): MIA AUCs, KS tests and means are too "
                       f"noisy to compare; evaluate on at least {MIN_SPLIT_ROWS} (TOFU forget10 has 400).")
    return out


def _conventions(info: dict[str, Any], kind: str, k: float) -> dict[str, str]:
    """How each reported number was computed (written to report.json and report.md)."""
    out = {"MIA AUC": "members = forget set, non-members = test set, higher score = member (sklearn ROC AUC); "
                      "the target is the retrained model's AUC, not 0.5"}
    if kind == "causal_lm":
        out["tokens"] = (f"{info['token_convention']} (Min-K%, Min-K%++, ZLib, exact memorisation, extraction "
                         "strength); losses and probabilities: mean over the predicted labelled tokens")
        if "min_k_fraction" in info:
            out["Min-K%"] = f"k = {k}"
    if "rouge" in info:
        out["ROUGE"] = info["rouge"]
    if "truth_ratio" in info or "utility_keys" in info:
        out["truth ratio"] = ("R = P̄(perturbed) / P(paraphrased or answer), geometric mean over perturbed answers; "
                              "forget: mean min(R, 1/R); other sets: mean max(0, 1 − R)")
    if "model_utility" in info:
        out["model utility"] = f"harmonic mean, {info['model_utility']}"
    if "forget_quality_statistic" in info:
        out["forget quality"] = (f"two-sample KS test of the forget set's per-example "
                                 f"{info['forget_quality_statistic'].replace('_', ' ')} values, model vs retrained: "
                                 "p-value, distance D and n; p ≥ 0.05 only means the test cannot tell them apart at this n")
    if "privleak_attack" in info:
        out["PrivLeak"] = (f"MUSE: 100·(a − a_retrained)/a_retrained with a = 1 − AUC ({info['privleak_attack']} "
                           "attack); 0 = like retraining, negative = under-unlearning")
    return out


def verdict(per_model: dict[str, dict[str, float]], info: dict[str, Any], wall_times: Mapping[str, float] | None = None) -> str:
    """One line: forgetting vs the retrained model, utility, privacy and cost of the unlearned model."""
    u, r, o = per_model["unlearned"], per_model.get("retrained"), per_model.get("original")
    if r is None:
        return "no retrained model given: forgetting cannot be judged (pass `retrained`)."
    parts = []
    if "forget_quality" in u:
        p, d = u["forget_quality"], u["forget_ks_distance"]
        floor = f", original D {o['forget_ks_distance']:.3f}" if o and "forget_ks_distance" in o else ""
        parts.append(f"forgetting: {'not distinguishable from' if p >= 0.05 else 'distinguishable from'} the retrained "
                     f"model (KS D {d:.3f}, p {p:.2g}, n {int(u['forget_ks_n'])}{floor})")
    elif "forget_loss" in u:
        parts.append(f"forgetting: forget loss {u['forget_loss']:.3f} vs retrained {r['forget_loss']:.3f}"
                     + (f" (original {o['forget_loss']:.3f})" if o else ""))
    key = next((k for k in ("model_utility", "test_accuracy") if k in u and k in r and r[k] > 0), None)
    if key is not None:
        parts.append(f"utility: {100 * u[key] / r[key]:.1f}% of the retrained model's {key.replace('_', ' ')}")
    elif "test_loss" in u:
        parts.append(f"utility: test loss {u['test_loss']:.3f} vs retrained {r['test_loss']:.3f}")
    if "privleak" in u:
        parts.append(f"privacy: PrivLeak {u['privleak']:+.1f}% (0 = like retraining)")
    elif info.get("attacks"):
        a = info["attacks"][0]
        parts.append(f"privacy: {a} MIA AUC {u[f'mia_{a}_auc']:.3f} vs retrained {r[f'mia_{a}_auc']:.3f}")
    if wall_times and wall_times.get("unlearned") is not None and wall_times.get("retrained"):
        parts.append(f"cost: {100 * wall_times['unlearned'] / wall_times['retrained']:.1f}% of the retrain's time")
    return "; ".join(parts) + "."


def _warnings(per_model: dict[str, dict[str, float]], kind: str, unlearned: torch.nn.Module) -> list[str]:
    """Heuristic flags for the usual failure of gradient-ascent unlearning: collapsed utility."""
    out: list[str] = []
    for name, m in per_model.items():
        for k, v in m.items():
            if k.endswith("_loss") and not math.isfinite(v):
                out.append(f"{name}: non-finite {k.replace('_', ' ')}")
    u = per_model["unlearned"]
    ref_name = "retrained" if "retrained" in per_model else ("original" if "original" in per_model else None)
    if ref_name is None:
        return out
    r = per_model[ref_name]
    if kind == "classification" and "test_accuracy" in u and "test_accuracy" in r:
        chance = 1.0 / getattr(base_model_of(unlearned).config, "num_labels", 2)
        above = r["test_accuracy"] - chance
        if above > 0.1 and u["test_accuracy"] < chance + 0.25 * above:
            out.append(f"utility collapsed: unlearned test accuracy {u['test_accuracy']:.3f} kept under a quarter "
                       f"of the {ref_name} model's margin over chance ({r['test_accuracy']:.3f} vs {chance:.3f})")
    if kind == "causal_lm" and "test_loss" in u and "test_loss" in r and u["test_loss"] > r["test_loss"] + math.log(2):
        out.append(f"utility collapsed: unlearned test perplexity more than doubled vs {ref_name}")
    if "retrained" in per_model and "forget_loss" in u and u["forget_loss"] > r["forget_loss"] + math.log(2) * 2:
        out.append("over-forgetting: unlearned forget loss is far above the retrained model's "
                   f"({u['forget_loss']:.3f} vs {r['forget_loss']:.3f})")
    return out
