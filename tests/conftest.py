"""Shared test set-up: offline, one intra-op thread (tiny models run faster and steadier that way)."""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# keyed fingerprints: a throw-away key per test session, never the user's ~/.cache/hf_iau/fingerprint.key
os.environ.setdefault("HF_IAU_KEY_FILE", os.path.join(tempfile.mkdtemp(prefix="hf_iau_key_"), "fingerprint.key"))

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
