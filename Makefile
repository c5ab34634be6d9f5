# The README's two commands: `make demo` (the main job) and `make test`.
# `make ui` serves the web app on http://127.0.0.1:7860 (UI_ARGS="--port 8000 ..." to change).
# Each creates .venv if missing, installs torch==2.13.0 when torch is absent (never an unpinned torch),
# installs the package with its extras, then runs.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
OUT    ?= demo_out
UI_ARGS ?=
STAMP  := $(VENV)/.counterfactory-installed

.PHONY: install demo test ui lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[dev,ui]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/counterfactory demo --out $(OUT)

test: $(STAMP)
	$(PY) -m pytest -q

ui: $(STAMP)
	$(VENV)/bin/counterfactory ui $(UI_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

bench: $(STAMP)
	$(PY) benchmarks/pipeline_overhead.py
	$(PY) benchmarks/crop_to_mask.py
	$(PY) benchmarks/compact_throughput.py

clean:
	rm -rf $(OUT) .pytest_cache build *.egg-info
