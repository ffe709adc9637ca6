"""Unlearning metrics: utility, membership inference, fidelity to the retrained model, canaries,
the LLM metrics of TOFU/MUSE/open-unlearning (``llm.py``: forget quality, truth ratio,
PrivLeak, ROUGE-L, exact memorisation, extraction strength, model utility, MUSE verbatim and
knowledge memorisation) and robustness probes (``robustness.py``: relearning, weight
quantisation, paraphrased questions).

Each metric is also shipped as a local ``evaluate`` module, loadable offline by path::

    import evaluate
    from hf_iau.metrics import evaluate_module_path
    mia = evaluate.load(evaluate_module_path("mia_auc"))
"""

from __future__ import annotations

from pathlib import Path

from .canary import canary_exposure, canary_rank, model_canary_exposure, sequence_nll
from .fidelity import causal_lm_mask, gap_to_retrain, kl_js_divergence, kl_js_per_position
from .llm import (
    MUSE_KNOWMEM_MAX_NEW_TOKENS,
    MUSE_VERBMEM_MAX_NEW_TOKENS,
    TOFU_MAX_NEW_TOKENS,
    TOFU_UTILITY_PARTS,
    answer_probability,
    answer_rouge,
    exact_memorisation,
    extraction_strength,
    forget_quality,
    greedy_answers,
    greedy_continuations,
    knowledge_memorisation,
    ks_test,
    lm_example_stats,
    model_utility,
    option_probability,
    privleak,
    rouge_l_f1,
    rouge_l_recall,
    truth_ratio,
    truth_ratio_score,
    utility_label,
    verbatim_memorisation,
    verbatim_pairs,
)
from .mia import (
    CONVENTIONS,
    DEFAULT_CONVENTION,
    DEFAULT_MIN_K,
    TokenLogProbs,
    loss_scores,
    min_k_plus_plus_scores,
    min_k_scores,
    reference_scores,
    resolve_convention,
    roc_auc,
    shadow_attack_scores,
    shadow_features,
    scored_targets,
    scored_token_mask,
    token_log_probs,
    zlib_length,
    zlib_scores,
    zlib_token_ids,
)
from .retrain_distribution import example_margins, klom_scores, label_margin, score_summary, z_scores
from .robustness import paraphrased, quantize_weights, relearn, relearn_split, robustness_probes
from .utility import accuracy, mean_loss, perplexity

EVALUATE_MODULES = ("accuracy", "mia_auc", "kl_js_divergence", "canary_exposure")


def evaluate_module_path(name: str) -> str:
    """Absolute path of the local ``evaluate`` module ``name`` (one of ``EVALUATE_MODULES``)."""
    if name not in EVALUATE_MODULES:
        raise ValueError(f"unknown metric module {name!r}; available: {', '.join(EVALUATE_MODULES)}")
    return str(Path(__file__).resolve().parent / "evaluate_modules" / name)


__all__ = [
    "example_margins",
    "klom_scores",
    "label_margin",
    "score_summary",
    "z_scores",
    "CONVENTIONS",
    "DEFAULT_CONVENTION",
    "DEFAULT_MIN_K",
    "EVALUATE_MODULES",
    "MUSE_KNOWMEM_MAX_NEW_TOKENS",
    "MUSE_VERBMEM_MAX_NEW_TOKENS",
    "TOFU_MAX_NEW_TOKENS",
    "TOFU_UTILITY_PARTS",
    "accuracy",
    "answer_probability",
    "answer_rouge",
    "canary_exposure",
    "canary_rank",
    "causal_lm_mask",
    "evaluate_module_path",
    "exact_memorisation",
    "extraction_strength",
    "forget_quality",
    "gap_to_retrain",
    "greedy_answers",
    "greedy_continuations",
    "kl_js_divergence",
    "kl_js_per_position",
    "knowledge_memorisation",
    "ks_test",
    "lm_example_stats",
    "loss_scores",
    "mean_loss",
    "min_k_plus_plus_scores",
    "min_k_scores",
    "model_canary_exposure",
    "model_utility",
    "option_probability",
    "paraphrased",
    "perplexity",
    "privleak",
    "quantize_weights",
    "reference_scores",
    "relearn",
    "relearn_split",
    "resolve_convention",
    "robustness_probes",
    "roc_auc",
    "rouge_l_f1",
    "rouge_l_recall",
    "scored_targets",
    "scored_token_mask",
    "sequence_nll",
    "shadow_attack_scores",
    "shadow_features",
    "token_log_probs",
    "TokenLogProbs",
    "truth_ratio",
    "truth_ratio_score",
    "utility_label",
    "verbatim_memorisation",
    "verbatim_pairs",
    "zlib_length",
    "zlib_scores",
    "zlib_token_ids",
]
