"""QA rows → prompt-masked LM examples: plain format and chat template, ids checked by hand."""

from __future__ import annotations

import pytest
from datasets import Dataset

from hf_iau.qa import qa_example, qa_prompt_ids, qa_to_lm_examples

from tiny import word_tokenizer

PAD, UNK, BOS, EOS = 0, 1, 2, 3


def w(i: int) -> int:
    """Id of word ``w{i}`` in tests/tiny.py's word tokenizer."""
    return i + 4


DATA = {"id": [10, 11], "question": ["w1 w2 w3", "w4"], "answer": ["w5 w6", "w7 w8 w9"], "note": ["x", "y"]}

# user turn, then " w59 <answer> w58" (w59 opens the assistant turn, w58 ends it)
TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] }} {% elif m['role'] == 'user' %}"
    "[BOS] {{ m['content'] }}{% else %} w59 {{ m['content'] }} w58{% endif %}{% endfor %}"
    "{% if add_generation_prompt %} w59{% endif %}"
)


def test_plain_format_without_chat_template():
    tok = word_tokenizer()
    assert not tok.chat_template
    ds = qa_to_lm_examples(Dataset.from_dict(DATA), tok)
    assert sorted(ds.column_names) == ["attention_mask", "id", "input_ids", "labels"]
    assert ds["id"] == [10, 11]
    # "Question: w1 w2 w3\nAnswer:" -> [UNK w1 w2 w3 UNK]; " w5 w6" + EOS
    assert ds[0]["input_ids"] == [UNK, w(1), w(2), w(3), UNK, w(5), w(6), EOS]
    assert ds[0]["labels"] == [-100] * 5 + [w(5), w(6), EOS]
    assert ds[1]["labels"] == [-100] * 3 + [w(7), w(8), w(9), EOS]
    assert ds[1]["attention_mask"] == [1] * 7
    assert qa_prompt_ids(tok, "w4") == [UNK, w(4), UNK]
    kept = qa_to_lm_examples(Dataset.from_dict(DATA), tok, keep_columns=["note"], id_column=None)
    assert sorted(kept.column_names) == ["attention_mask", "input_ids", "labels", "note"]


def test_chat_template_is_used_when_present():
    tok = word_tokenizer()
    tok.chat_template = TEMPLATE
    ds = qa_to_lm_examples(Dataset.from_dict(DATA), tok)
    # "[BOS] w1 w2 w3 w59" prompt, " w5 w6 w58" answer, then EOS (the template does not end with it)
    assert ds[0]["input_ids"] == [BOS, w(1), w(2), w(3), w(59), w(5), w(6), w(58), EOS]
    assert ds[0]["labels"] == [-100] * 5 + [w(5), w(6), w(58), EOS]
    assert qa_prompt_ids(tok, "w4") == [BOS, w(4), w(59)]
    sys = qa_example(tok, "w4", "w7", system_prompt="w30 w31")
    assert sys["input_ids"] == [w(30), w(31), BOS, w(4), w(59), w(7), w(58), EOS]
    assert sys["labels"][:5] == [-100] * 5
    plain = qa_example(tok, "w4", "w7", use_chat_template=False)
    assert plain["input_ids"] == [UNK, w(4), UNK, w(7), EOS]


def test_eos_not_doubled_truncation_and_bad_input():
    tok = word_tokenizer()
    tok.chat_template = TEMPLATE.replace(" w58", " [EOS]")
    ex = qa_example(tok, "w4", "w7")
    assert ex["input_ids"] == [BOS, w(4), w(59), w(7), EOS]
    cut = qa_example(tok, "w1 w2", "w5 w6 w7 w8", max_length=6)
    assert cut["input_ids"] == [BOS, w(1), w(2), w(59), w(5), w(6)] and cut["labels"][-2:] == [w(5), w(6)]
    with pytest.raises(ValueError, match="max_length=4 leaves no answer token"):
        qa_example(tok, "w1 w2", "w5", max_length=4)
    with pytest.raises(ValueError, match="answer_column"):
        qa_to_lm_examples(Dataset.from_dict(DATA), tok, answer_column="response")
    with pytest.raises(ValueError, match="one answer per row"):
        qa_example(tok, "w1", ["w2", "w3"])
    tok.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}{% if add_generation_prompt %}w59{% endif %}"
    with pytest.raises(ValueError, match="chat_template"):
        qa_example(tok, "w1", "w2")


def test_truth_ratio_inputs_from_list_or_string_columns():
    from hf_iau.qa import qa_truth_ratio_inputs

    tok = word_tokenizer()
    data = Dataset.from_dict({"id": [1, 2], "question": ["w1", "w2"], "paraphrased_answer": ["w3", "w4 w5"],
                              "perturbed_answer": [["w6", "w7"], ["w8", "w9 w10"]], "alt": ["w11", "w12"]})
    para, pert = qa_truth_ratio_inputs(data, tok)
    assert para["labels"] == [[-100] * 3 + [w(3), EOS], [-100] * 3 + [w(4), w(5), EOS]]
    assert len(pert) == 2 and pert[1]["labels"][1] == [-100] * 3 + [w(9), w(10), EOS]
    assert pert[0]["id"] == [1, 2] and sorted(pert[0].column_names) == ["attention_mask", "id", "input_ids", "labels"]
    _, by_columns = qa_truth_ratio_inputs(data, tok, perturbed_columns=["alt"])
    assert by_columns[0]["labels"][0] == [-100] * 3 + [w(11), EOS]
    ragged = data.remove_columns("perturbed_answer").add_column("perturbed_answer", [["w6"], ["w8", "w9"]])
    with pytest.raises(ValueError, match="same number"):
        qa_truth_ratio_inputs(ragged, tok)
