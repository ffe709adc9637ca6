"""Tokenizers for models trained from scratch: a byte-level BPE tokenizer learned from your own text."""

from __future__ import annotations

from typing import Iterable

END_OF_TEXT = "<|endoftext|>"


def train_tokenizer(texts: Iterable[str], vocab_size: int, special_token: str = END_OF_TEXT):
    """A byte-level BPE ``PreTrainedTokenizerFast`` (GPT-2 style) trained on ``texts``.

    ``special_token`` is the tokenizer's bos, eos and pad token (id 0); every byte is in the base
    alphabet, so no text is ever out of vocabulary. Deterministic: the same texts give the same
    vocabulary. Train it on the training split only (never on held-out or test text), then save it
    with the model (``save_pretrained``) so that ``unlearn``/``evaluate`` reload the same one.

    Example::

        tok = train_tokenizer(dataset["text"], vocab_size=3000)
        config = LlamaConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, ...)
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if not isinstance(vocab_size, int) or vocab_size < 1:
        raise ValueError(f"train_tokenizer: vocab_size must be a positive int, got {vocab_size!r}.")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[special_token], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=special_token, eos_token=special_token, pad_token=special_token
    )
