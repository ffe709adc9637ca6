"""Question–answer rows → prompt-masked causal-LM examples (TOFU/MUSE style).

Each example is ``input_ids = prompt + answer (+ EOS)`` with ``labels = [-100] * len(prompt) +
answer (+ EOS)``: training, unlearning and every per-token metric see the answer only.

The prompt is the tokenizer's chat template (one user turn, generation prompt on) when it has
one, else the plain format ``"Question: {question}\\nAnswer:"`` followed by the answer as
``" {answer}"``. Prompt and answer are tokenized separately, so the label boundary is exact.
"""

from __future__ import annotations

from typing import Any, Sequence

from datasets import Dataset

IGNORE_INDEX = -100
PLAIN_PROMPT = "Question: {question}\nAnswer:"


def _has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def _messages(question: str, system_prompt: str | None) -> list[dict[str, str]]:
    return ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
        {"role": "user", "content": question}
    ]


def _ids(tokenizer: Any, text: str, special: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def _texts(tokenizer: Any, question: str, answer: str | None, system_prompt: str | None, chat: bool) -> tuple[str, str]:
    """(prompt text, answer text); the answer text is what follows the prompt in the full rendering."""
    if not chat:
        return PLAIN_PROMPT.format(question=question), ("" if answer is None else " " + answer)
    msgs = _messages(question, system_prompt)
    prompt = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    if answer is None:
        return prompt, ""
    full = tokenizer.apply_chat_template(msgs + [{"role": "assistant", "content": answer}], tokenize=False)
    if not full.startswith(prompt):
        raise ValueError(
            "the tokenizer's chat_template renders the conversation with the answer so that it does not start "
            "with the generation prompt; fix the template or pass use_chat_template=False."
        )
    return prompt, full[len(prompt) :]


def qa_prompt_ids(
    tokenizer: Any, question: str, *, system_prompt: str | None = None, use_chat_template: bool | None = None
) -> list[int]:
    """Token ids of the prompt for ``question`` (what ``model.generate`` continues)."""
    chat = _has_chat_template(tokenizer) if use_chat_template is None else use_chat_template
    prompt, _ = _texts(tokenizer, question, None, system_prompt, chat)
    return _ids(tokenizer, prompt, special=not chat)


def qa_example(
    tokenizer: Any,
    question: str,
    answer: str,
    *,
    max_length: int | None = None,
    system_prompt: str | None = None,
    use_chat_template: bool | None = None,
) -> dict[str, list[int]]:
    """One prompt-masked example: ``input_ids``, ``attention_mask``, ``labels`` (prompt = -100).

    EOS is appended unless the answer already ends with it. With ``max_length`` the answer's tail is cut.
    """
    if not isinstance(question, str) or not isinstance(answer, str):
        raise ValueError(
            f"question and answer must be strings, got {type(question).__name__} and {type(answer).__name__}; "
            "give one answer per row (flatten lists of answers into rows first)."
        )
    chat = _has_chat_template(tokenizer) if use_chat_template is None else use_chat_template
    prompt_text, answer_text = _texts(tokenizer, question, answer, system_prompt, chat)
    prompt = _ids(tokenizer, prompt_text, special=not chat)  # chat templates write their own BOS
    target = _ids(tokenizer, answer_text, special=False)
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is not None and (not target or target[-1] != eos):
        target.append(int(eos))
    if max_length is not None:
        if len(prompt) >= max_length:
            raise ValueError(
                f"max_length={max_length} leaves no answer token (the prompt alone has {len(prompt)} tokens); "
                "raise max_length or shorten the question."
            )
        target = target[: max_length - len(prompt)]
    return {
        "input_ids": prompt + target,
        "attention_mask": [1] * (len(prompt) + len(target)),
        "labels": [IGNORE_INDEX] * len(prompt) + target,
    }


def qa_to_lm_examples(
    dataset: Dataset,
    tokenizer: Any,
    question_column: str = "question",
    answer_column: str = "answer",
    *,
    max_length: int | None = None,
    system_prompt: str | None = None,
    use_chat_template: bool | None = None,
    id_column: str | None = "id",
    keep_columns: Sequence[str] = (),
) -> Dataset:
    """Map a (question, answer) dataset to prompt-masked LM examples (see :func:`qa_example`).

    Output columns: ``input_ids``, ``attention_mask``, ``labels``, plus ``id_column`` (when present)
    and ``keep_columns``. ``use_chat_template=None`` uses the chat template when the tokenizer has one.
    """
    for col, name in ((question_column, "question_column"), (answer_column, "answer_column")):
        if col not in dataset.column_names:
            raise ValueError(
                f"`{name}`={col!r} is not a column of the dataset (columns: {', '.join(dataset.column_names)}); "
                f"pass {name}=<the right column>."
            )
    missing = [c for c in keep_columns if c not in dataset.column_names]
    if missing:
        raise ValueError(f"`keep_columns`: {missing} are not columns of the dataset.")
    keep = set(keep_columns) | ({id_column} if id_column and id_column in dataset.column_names else set())
    clash = keep & {"input_ids", "attention_mask", "labels"}
    if clash:
        raise ValueError(f"`keep_columns` must not contain {sorted(clash)}: those columns are rebuilt.")

    def encode(batch: dict[str, list]) -> dict[str, list]:
        rows = [
            qa_example(tokenizer, q, a, max_length=max_length, system_prompt=system_prompt,
                       use_chat_template=use_chat_template)
            for q, a in zip(batch[question_column], batch[answer_column])
        ]
        return {k: [r[k] for r in rows] for k in ("input_ids", "attention_mask", "labels")}

    drop = [c for c in dataset.column_names if c not in keep]
    return dataset.map(encode, batched=True, remove_columns=drop)


def qa_truth_ratio_inputs(
    dataset: Dataset,
    tokenizer: Any,
    question_column: str = "question",
    paraphrased_column: str = "paraphrased_answer",
    perturbed_columns: str | Sequence[str] = "perturbed_answer",
    **kwargs: Any,
) -> tuple[Dataset, list[Dataset]]:
    """(paraphrased examples, [perturbed examples, ...]) aligned row by row with ``dataset``, for
    ``evaluate_unlearning(truth_ratio_data={"forget": ...})`` and :func:`hf_iau.metrics.truth_ratio`.

    ``perturbed_columns``: one column holding a list of K wrong answers per row (TOFU's
    ``perturbed_answer``; every row needs the same K), or several string columns. ``kwargs`` go to
    :func:`qa_to_lm_examples`.
    """
    if isinstance(perturbed_columns, str):
        if perturbed_columns not in dataset.column_names:
            raise ValueError(f"`perturbed_columns`={perturbed_columns!r} is not a column of the dataset.")
        lists = dataset[perturbed_columns]
        sizes = {len(v) if isinstance(v, (list, tuple)) else -1 for v in lists}
        if len(sizes) != 1 or min(sizes) < 1:
            raise ValueError(
                f"`{perturbed_columns}` must hold a non-empty list of wrong answers per row, the same number in "
                f"every row; found sizes {sorted(sizes)}"
            )
        k = sizes.pop()
        wrong = [dataset.add_column(f"__wrong_{j}", [v[j] for v in lists]) for j in range(k)]
        perturbed = [qa_to_lm_examples(w, tokenizer, question_column, f"__wrong_{j}", **kwargs)
                     for j, w in enumerate(wrong)]
    else:
        perturbed = [qa_to_lm_examples(dataset, tokenizer, question_column, c, **kwargs) for c in perturbed_columns]
    return qa_to_lm_examples(dataset, tokenizer, question_column, paraphrased_column, **kwargs), perturbed
