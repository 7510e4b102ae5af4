# Set-up and entry points. `make demo` and `make test` do everything on a fresh machine with Python 3.11.
PYTHON ?= python3
VENV   := .venv
BIN    := $(abspath $(VENV))/bin
STAMP  := $(VENV)/.installed
CORES  ?= all
export PATH := $(BIN):$(PATH)

.PHONY: install demo test test-fast dryrun lint report clean-demo

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

## The embedded demo: fetch -> preprocess -> train -> register -> evaluate -> report, on CPU.
demo: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) --resources gpu=1 --configfile config/demo.yaml

## All tests (unit, workflow dry-runs and lint, and the small end-to-end run).
test: $(STAMP)
	$(BIN)/python -m pytest -q

## Unit tests only (skips the slow end-to-end pipeline test).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

dryrun: $(STAMP)
	$(BIN)/snakemake -n --configfile config/config.yaml

lint: $(STAMP)
	$(BIN)/snakemake --lint --configfile config/config.yaml

## Regenerate result tables and figures from the saved metrics (no retraining).
report: $(STAMP)
	$(BIN)/regbench report --config config/demo.yaml --out-dir results/demo
	$(BIN)/regbench report --config config/papers/he2022.yaml --out-dir results/he2022
	$(BIN)/regbench report --config config/papers/he2022_long.yaml --out-dir results/he2022_long
	$(BIN)/regbench report --config config/papers/he2022_4k.yaml --out-dir results/he2022_4k
	$(BIN)/regbench report --config config/papers/he2022_clip.yaml --out-dir results/he2022_clip
	$(BIN)/regbench report --config config/papers/he2022_clip8k.yaml --out-dir results/he2022_clip8k
	$(BIN)/regbench report --config config/papers/he2022_celogits.yaml --out-dir results/he2022_celogits
	$(BIN)/regbench report --config config/papers/he2022_clip_allpairs.yaml --out-dir results/he2022_clip_allpairs
	$(BIN)/regbench report --config config/papers/he2022_clip_allpairs_seed1.yaml --out-dir results/he2022_clip_allpairs_seed1
	$(BIN)/regbench report --config config/papers/he2022_clip_allpairs_seed2.yaml --out-dir results/he2022_clip_allpairs_seed2

clean-demo:
	rm -rf data/prep/demo work/demo logs/demo benchmarks/demo
