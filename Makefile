# trilemma — the two commands a new user runs: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup rig browser lint test unit demo bench-client clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[test,ray]'
	touch $@

# vLLM CPU venv + tiny local Llama, cached outside the clone (~3 min the first time)
rig:
	$(PY) scripts/vllm_rig.py setup

# headless Chromium for the report screenshot test (Debian package)
browser:
	@bash scripts/setup_browser.sh

test: setup rig browser lint
	$(BIN)/python -m pytest -q --durations=20 tests

# style (ruff), types (mypy: the whole package; the numeric core strictly), the package's floors (import-linter), shell (shellcheck)
lint: setup
	$(BIN)/ruff check bench tests scripts
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/shellcheck scripts/*.sh

unit: setup
	$(BIN)/python -m pytest -q tests/unit

demo: setup
	$(BIN)/python scripts/demo.py

# client calibration figures (TTFT/ITL bias vs the simulator's ground truth)
bench-client: setup
	$(BIN)/trilemma calibrate

clean:
	rm -rf $(VENV) results/* reports/*
