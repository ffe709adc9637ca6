# Two entry points (see README): `make demo` and `make test`. Both create/reuse .venv.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is pinned in the same pip command: an unpinned torch pulls a 5.5 GB CUDA build.
TORCH_PIN ?= torch==2.13.0

.PHONY: install demo test clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/pip install -q --disable-pip-version-check "$(TORCH_PIN)" -e ".[test]"
	touch $@

install: $(VENV)/.installed

demo: install
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m hf_iau demo

test: install
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) build *.egg-info
