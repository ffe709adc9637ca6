"""LLM unlearning metrics as TOFU, MUSE and open-unlearning define them.

Per-example statistics come from one teacher-forced pass over prompt-masked examples
(``labels`` = -100 on the prompt, see :mod:`hf_iau.qa`); the aggregates are small functions of
them. Two token conventions (see :func:`hf_iau.metrics.mia.scored_token_mask`):
``"open_unlearning"`` (the default) reproduces open-unlearning (its MIA/EM/ES drop the last
labelled token, its extraction strength never goes below 1/n); ``"muse"`` (MUSE's original code)
scores every labelled target. In both the answer loss is Σ ℓ_t / n over the n predicted labelled
tokens (open-unlearning divides by the unshifted label count, n + 1 on raw-text rows whose
position 0 is labelled: we do not copy that). A row without a scored token gets NaN and is
skipped by the aggregates, never scored as a perfect member.

Generation lengths: TOFU answers up to :data:`TOFU_MAX_NEW_TOKENS` (200) new tokens; MUSE's
verbatim and knowledge memorisation up to 128 and 32.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import ArrayLike

from .mia import (
    DEFAULT_CONVENTION,
    DEFAULT_MIN_K,
    IGNORE_INDEX,
    _full,
    min_k_plus_plus_scores,
    min_k_scores,
    resolve_convention,
    scored_targets,
    token_log_probs,
)

TOFU_MAX_NEW_TOKENS = 200  # TOFU / open-unlearning generation length for QA answers
MUSE_VERBMEM_MAX_NEW_TOKENS = 128  # MUSE verbatim memorisation
MUSE_KNOWMEM_MAX_NEW_TOKENS = 32  # MUSE knowledge memorisation
# TOFU's model utility: harmonic mean of these 9 numbers (retain set, real authors, world facts ×
# answer probability, ROUGE-L recall, truth ratio); the last two sets use the option probability.
TOFU_UTILITY_PARTS = tuple(
    f"{s}_{m}" for s in ("retain", "real_authors", "world_facts") for m in ("probability", "rouge_l_recall", "truth_ratio")
)

# --------------------------------------------------------------------------- aggregates


def privleak(auc_model: float, auc_retrained: float) -> float:
    """PrivLeak (MUSE, Shi et al. 2024), in percent.

    MUSE's AUC is oriented so that a memorised forget set scores low; ours (members = forget set
    scored higher, :func:`hf_iau.metrics.roc_auc`) is its complement. With a = 1 − AUC:
    PrivLeak = 100 · (a_model − a_retrained) / a_retrained. 0 = like the retrained model; strongly
    negative = the forget set is still recognisable (under-unlearning); positive = over-unlearning.
    """
    a_model, a_ret = 1.0 - float(auc_model), 1.0 - float(auc_retrained)
    if a_ret <= 0:
        return float("nan")
    return 100.0 * (a_model - a_ret) / a_ret


def _finite(x: ArrayLike) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64).reshape(-1)
    return a[np.isfinite(a)]


def ks_test(scores_model: ArrayLike, scores_retrained: ArrayLike) -> dict[str, float]:
    """Two-sample Kolmogorov–Smirnov test (``scipy.stats.ks_2samp``, two-sided, exact/auto as scipy)
    between per-example statistics under the model and under the retrained model, over finite entries:
    ``{"ks_distance": D, "p_value": p, "n_model": n_a, "n_retrained": n_b}`` (NaN D, p when a side is empty).

    Report D and n with p: a p-value above 0.05 only says the test could not tell the two apart at this n;
    p-values are never averaged or ranked. Compare D with the distance between two retrained models (the floor).
    """
    from scipy.stats import ks_2samp

    a, b = _finite(scores_model), _finite(scores_retrained)
    out = {"ks_distance": float("nan"), "p_value": float("nan"), "n_model": float(len(a)), "n_retrained": float(len(b))}
    if len(a) and len(b):
        res = ks_2samp(a, b)
        out.update(ks_distance=float(res.statistic), p_value=float(res.pvalue))
    return out


def forget_quality(scores_model: ArrayLike, scores_retrained: ArrayLike) -> float:
    """Forget quality (TOFU): p-value of the two-sample Kolmogorov–Smirnov test (:func:`ks_test`)
    between per-example statistics of the forget set under the model and under the retrained model.

    TOFU uses truth ratios (:func:`truth_ratio`); without paraphrased/perturbed answers any
    per-example score (e.g. the answer loss) can be used. High p (≥ 0.05) = the test cannot tell the
    model from retraining at this n. Non-finite entries are dropped; NaN when either side is empty.
    """
    return ks_test(scores_model, scores_retrained)["p_value"]


def truth_ratio(paraphrased_losses: ArrayLike, perturbed_losses: ArrayLike) -> np.ndarray:
    """Truth ratio (TOFU) per question: R_i = P̄_pert,i / P_para,i with length-normalised probabilities.

    P = exp(−ℓ) with ℓ the mean token loss of an answer; the perturbed (wrong) answers are combined
    as a geometric mean, as in TOFU and open-unlearning: R_i = exp(ℓ_para,i − mean_j ℓ_pert,ij).
    ``paraphrased_losses``: [N]; ``perturbed_losses``: [N, K].
    """
    para = np.asarray(paraphrased_losses, dtype=np.float64).reshape(-1)
    pert = np.asarray(perturbed_losses, dtype=np.float64)
    if pert.ndim == 1:
        pert = pert[:, None]
    if pert.shape[0] != para.shape[0]:
        raise ValueError(f"perturbed_losses has {pert.shape[0]} rows, paraphrased_losses {para.shape[0]}")
    return np.exp(para - pert.mean(axis=1))


def truth_ratio_score(ratios: ArrayLike, split: str = "forget") -> float:
    """Aggregate truth ratios as TOFU: forget set mean(min(R, 1/R)) (1 = true and false equally likely);
    retain/utility sets mean(max(0, 1 − R)) (higher = the true answer is preferred). NaN rows are skipped."""
    r = _finite(ratios)
    if len(r) == 0:
        return float("nan")
    if split == "forget":
        return float(np.mean(np.minimum(r, 1.0 / r)))
    if split in ("retain", "utility"):
        return float(np.mean(np.maximum(0.0, 1.0 - r)))
    raise ValueError(f"split must be 'forget' or 'retain', got {split!r}")


def answer_probability(losses: ArrayLike) -> np.ndarray:
    """Length-normalised answer probability (TOFU "Prob"): P_i = exp(−ℓ_i), ℓ_i the mean token loss."""
    return np.exp(-np.asarray(losses, dtype=np.float64))


def option_probability(correct_losses: ArrayLike, wrong_losses: ArrayLike) -> np.ndarray:
    """Probability of the correct option among options (TOFU real authors / world facts):
    P_c / (P_c + Σ_j P_wrong,j), each P = exp(−mean token loss)."""
    pc = answer_probability(correct_losses).reshape(-1)
    pw = answer_probability(wrong_losses)
    if pw.ndim == 1:
        pw = pw[:, None]
    return pc / (pc + pw.sum(axis=1))


def model_utility(values: Mapping[str, float] | Sequence[float]) -> float:
    """Model utility (TOFU): harmonic mean of the utility metrics (``scipy.stats.hmean``), n / Σ 1/v_i.

    Values must lie in [0, ∞); one zero makes it 0. NaN entries are an error (say which metric is missing).
    """
    from scipy.stats import hmean

    vals = np.asarray(list(values.values()) if isinstance(values, Mapping) else list(values), dtype=np.float64)
    if len(vals) == 0 or not np.all(np.isfinite(vals)) or np.any(vals < 0):
        raise ValueError(f"model_utility needs finite, non-negative values, got {vals.tolist()}")
    if np.any(vals == 0):
        return 0.0
    return float(hmean(vals))


def utility_label(parts: Sequence[str]) -> str:
    """How a model utility was computed: ``"TOFU (9 parts)"`` when ``parts`` are TOFU's nine
    (:data:`TOFU_UTILITY_PARTS`), else ``"reduced (k parts: …)"``, never passed off as TOFU's."""
    if set(parts) == set(TOFU_UTILITY_PARTS):
        return "TOFU (9 parts)"
    return f"reduced ({len(parts)} parts: {', '.join(parts)})"


def _rouge_l(predictions: Sequence[str], references: Sequence[str], use_stemmer: bool, field: str) -> np.ndarray:
    try:
        from rouge_score import rouge_scorer
    except ImportError as err:  # pragma: no cover - the test extra installs it
        raise ImportError("ROUGE needs the `rouge-score` package: pip install rouge-score") from err
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=use_stemmer)
    return np.array([getattr(scorer.score(ref, pred)["rougeL"], field) for pred, ref in zip(predictions, references)])


def rouge_l_recall(predictions: Sequence[str], references: Sequence[str], use_stemmer: bool = True) -> np.ndarray:
    """ROUGE-L recall of each prediction against its reference (``rouge_score``, Porter stemmer as TOFU):
    LCS(reference, prediction) / |reference| in tokens."""
    return _rouge_l(predictions, references, use_stemmer, "recall")


def rouge_l_f1(predictions: Sequence[str], references: Sequence[str], use_stemmer: bool = True) -> np.ndarray:
    """ROUGE-L F1 (MUSE): 2·P·R / (P + R) with P = LCS / |prediction|, R = LCS / |reference| (0 when LCS = 0)."""
    return _rouge_l(predictions, references, use_stemmer, "fmeasure")


# --------------------------------------------------------------------------- per-example statistics


@torch.no_grad()
def _hits(
    logits: torch.Tensor, labels: torch.Tensor, input_ids: torch.Tensor | None, convention: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(argmax == target, scored mask), ``[B, T-1]``, under teacher forcing."""
    convention = resolve_convention(convention)
    target, mask = scored_targets(labels, input_ids, convention)
    pred = logits[:, :-1].argmax(-1)
    return pred == target.to(pred.device), mask.to(pred.device)


def exact_memorisation(
    logits: torch.Tensor, labels: torch.Tensor, input_ids: torch.Tensor | None = None,
    convention: str = DEFAULT_CONVENTION,
) -> np.ndarray:
    """Exact memorisation (Tirumala et al. 2022; open-unlearning): EM_i = (1/n_i) Σ_t 1[argmax p(·|x_<t) = x_t]
    over the scored answer tokens under teacher forcing. NaN when n_i = 0."""
    hit, mask = _hits(logits, labels, input_ids, convention)
    hit = hit & mask
    n = mask.sum(-1).double()
    out = hit.sum(-1).double() / n.clamp_min(1)
    out[n == 0] = float("nan")
    return out.cpu().numpy()


def extraction_strength(
    logits: torch.Tensor, labels: torch.Tensor, input_ids: torch.Tensor | None = None,
    convention: str = DEFAULT_CONVENTION,
) -> np.ndarray:
    """Extraction strength (Carlini et al. 2021 style; open-unlearning): ES_i = 1 − k*_i / n_i, with k*_i the
    shortest prefix of the answer after which every remaining token is the greedy (argmax) prediction.

    ``"muse"``: k* ∈ [0, n] (no correct suffix → ES = 0; NaN when n = 0). ``"open_unlearning"``:
    k* ∈ [0, n − 1] as in its loop (no correct suffix → ES = 1/n; 0 when n = 0).
    """
    convention = resolve_convention(convention)
    hit, mask = _hits(logits, labels, input_ids, convention)
    hit, mask = hit.cpu(), mask.cpu()
    out = np.empty(hit.size(0))
    for i in range(hit.size(0)):
        h = hit[i][mask[i]].numpy()
        n = len(h)
        if n == 0:
            out[i] = 0.0 if convention == "open_unlearning" else float("nan")
            continue
        wrong = np.flatnonzero(~h)
        k = 0 if len(wrong) == 0 else int(wrong[-1]) + 1  # the suffix after the last miss is all correct
        if convention == "open_unlearning":
            k = min(k, n - 1)
        out[i] = 1.0 - k / n
    return out


def _rows(examples: Any) -> list[dict[str, Any]]:
    keep = ("input_ids", "attention_mask", "labels")
    if hasattr(examples, "column_names"):
        missing = [c for c in ("input_ids", "labels") if c not in examples.column_names]
        if missing:
            raise ValueError(f"examples need columns {missing}; build them with hf_iau.qa.qa_to_lm_examples")
        cols = [c for c in keep if c in examples.column_names]
        data = {c: examples[c] for c in cols}
        return [{c: data[c][i] for c in cols} for i in range(len(examples))]
    return [{k: r[k] for k in keep if k in r} for r in examples]


@torch.no_grad()
def lm_example_stats(
    model: torch.nn.Module,
    examples: Any,
    *,
    tokenizer: Any = None,
    batch_size: int = 16,
    convention: str = DEFAULT_CONVENTION,
    k: float = DEFAULT_MIN_K,
) -> dict[str, np.ndarray]:
    """One teacher-forced pass over prompt-masked ``examples`` (a Dataset or list of dicts with
    ``input_ids``, ``labels``, optional ``attention_mask``); per example:

    ``loss`` (mean token loss of the answer: Σ ℓ_t / n_i over the n_i predicted labelled tokens, in
    both conventions), ``count`` (n_i), ``probability`` = exp(−loss), ``exact_memorisation``,
    ``extraction_strength``, ``min_k``, ``min_k_plus_plus`` (these four in ``convention``). Rows
    without a scored token hold NaN (``count`` 0).
    """
    from ..collators import CausalLMCollator

    convention = resolve_convention(convention)
    rows = _rows(examples)
    # pad id only fills attention-masked positions: any id works without a tokenizer
    collate = CausalLMCollator(tokenizer, pad_token_id=0 if tokenizer is None else None)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: dict[str, list[np.ndarray]] = {}
    try:
        for start in range(0, len(rows), batch_size):
            batch = collate(rows[start : start + batch_size])
            ids, labels = batch["input_ids"].to(device), batch["labels"].to(device)
            logits = model(input_ids=ids, attention_mask=batch["attention_mask"].to(device)).logits
            lp = F.log_softmax(_full(logits[:, :-1]), dim=-1)
            target = labels[:, 1:]
            tok_loss = -lp.gather(-1, target.clamp_min(0).unsqueeze(-1)).squeeze(-1) * (target != IGNORE_INDEX)
            n = (target != IGNORE_INDEX).sum(-1)
            loss = (tok_loss.sum(-1).double() / n.clamp_min(1)).cpu().numpy()
            loss[n.cpu().numpy() == 0] = float("nan")
            stats = token_log_probs(logits, labels, ids, convention)
            parts = {
                "loss": loss,
                "count": n.double().cpu().numpy(),
                "exact_memorisation": exact_memorisation(logits, labels, ids, convention),
                "extraction_strength": extraction_strength(logits, labels, ids, convention),
                "min_k": min_k_scores(stats, k),
                "min_k_plus_plus": min_k_plus_plus_scores(stats, k),
            }
            for key, v in parts.items():
                out.setdefault(key, []).append(np.asarray(v, dtype=np.float64))
    finally:
        model.train(was_training)
    res = {key: np.concatenate(v) if v else np.zeros(0) for key, v in out.items()}
    res["probability"] = answer_probability(res.get("loss", np.zeros(0)))
    return res


# --------------------------------------------------------------------------- generation


@torch.no_grad()
def greedy_continuations(
    model: torch.nn.Module, tokenizer: Any, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
    batch_size: int = 16,
) -> list[str]:
    """Greedy continuations (``model.generate``, ``do_sample=False``) of token-id ``prompts``; each cut
    at the first EOS, decoded without special tokens, stripped.

    Prompts of equal length are batched together, so no padding enters the model (results do not
    depend on ``batch_size``). A model with fewer positions than prompt + ``max_new_tokens`` generates up to
    its last position (a small model cannot write TOFU's 200 tokens).
    """
    limit = _max_positions(model)
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    answers: list[str] = [""] * len(prompts)
    by_len: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        by_len.setdefault(len(p), []).append(i)
    try:
        for length, idx in sorted(by_len.items()):
            for start in range(0, len(idx), batch_size):
                chunk = idx[start : start + batch_size]
                new = max_new_tokens if limit is None else min(max_new_tokens, limit - length)
                if new <= 0:
                    continue
                ids = torch.tensor([list(prompts[i]) for i in chunk], device=device)
                gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                     max_new_tokens=new, eos_token_id=eos, pad_token_id=pad, num_beams=1)
                for i, row in zip(chunk, gen[:, length:].tolist()):
                    if eos is not None and eos in row:
                        row = row[: row.index(eos)]
                    answers[i] = tokenizer.decode(row, skip_special_tokens=True).strip()
    finally:
        model.train(was_training)
    return answers


def _max_positions(model: torch.nn.Module) -> int | None:
    """The number of positions a model with learned position embeddings can read (None: no fixed limit)."""
    config = getattr(model, "config", None)
    for name in ("n_positions", "max_position_embeddings"):
        value = getattr(config, name, None)
        if isinstance(value, int) and getattr(config, "model_type", "") in ("gpt2", "gpt_neo", "opt", "bert"):
            return value
    return None


def greedy_answers(
    model: torch.nn.Module,
    tokenizer: Any,
    questions: Iterable[str],
    *,
    max_new_tokens: int = TOFU_MAX_NEW_TOKENS,
    batch_size: int = 16,
    system_prompt: str | None = None,
    use_chat_template: bool | None = None,
) -> list[str]:
    """Greedy answers to ``questions`` prompted as in :func:`hf_iau.qa.qa_prompt_ids`, up to
    ``max_new_tokens`` (TOFU: 200), see :func:`greedy_continuations`."""
    from ..qa import qa_prompt_ids

    prompts = [qa_prompt_ids(tokenizer, q, system_prompt=system_prompt, use_chat_template=use_chat_template)
               for q in questions]
    return greedy_continuations(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)


def answer_rouge(
    model: torch.nn.Module,
    tokenizer: Any,
    questions: Sequence[str],
    answers: Sequence[str],
    **generation: Any,
) -> np.ndarray:
    """ROUGE-L recall of the greedy answer (up to 200 new tokens unless ``max_new_tokens``) to each
    question against the reference answer (TOFU "ROUGE")."""
    return rouge_l_recall(greedy_answers(model, tokenizer, questions, **generation), list(answers))


def knowledge_memorisation(
    model: torch.nn.Module,
    tokenizer: Any,
    questions: Sequence[str],
    answers: Sequence[str],
    *,
    max_new_tokens: int = MUSE_KNOWMEM_MAX_NEW_TOKENS,
    **generation: Any,
) -> np.ndarray:
    """MUSE knowledge memorisation (KnowMem): ROUGE-L F1 of the greedy answer (up to 32 new tokens)
    to each question against its reference answer."""
    got = greedy_answers(model, tokenizer, questions, max_new_tokens=max_new_tokens, **generation)
    return rouge_l_f1(got, list(answers))


def verbatim_pairs(
    tokenizer: Any, texts: Sequence[str], prompt_tokens: int = 32,
    continuation_tokens: int = MUSE_VERBMEM_MAX_NEW_TOKENS,
) -> tuple[list[list[int]], list[str]]:
    """(prompt ids, reference continuation text) of each text for :func:`verbatim_memorisation`: its first
    ``prompt_tokens`` tokens and the next ``continuation_tokens`` (decoded). Texts too short to leave a
    continuation are an error naming how many."""
    prompts, refs, short = [], [], 0
    for text in texts:
        ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        if len(ids) <= prompt_tokens:
            short += 1
            continue
        prompts.append(ids[:prompt_tokens])
        refs.append(tokenizer.decode(ids[prompt_tokens : prompt_tokens + continuation_tokens], skip_special_tokens=True))
    if short:
        raise ValueError(f"{short} of {len(texts)} texts have at most prompt_tokens={prompt_tokens} tokens; "
                         "lower prompt_tokens or drop the short texts.")
    return prompts, refs


def verbatim_memorisation(
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: Sequence[Sequence[int]],
    continuations: Sequence[str],
    *,
    max_new_tokens: int = MUSE_VERBMEM_MAX_NEW_TOKENS,
    batch_size: int = 16,
) -> np.ndarray:
    """MUSE verbatim memorisation (VerbMem): ROUGE-L F1 of the greedy continuation (up to 128 new tokens)
    of each prompt (token ids, e.g. from :func:`verbatim_pairs`) against the true continuation."""
    got = greedy_continuations(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)
    return rouge_l_f1(got, list(continuations))


def nanmean(x: ArrayLike) -> float:
    """Mean over the finite entries (NaN when none)."""
    a = _finite(x)
    return float(a.mean()) if len(a) else math.nan
