# Set-up and entry points. `make demo` and `make test` do everything on a fresh machine with Python 3.11.
PYTHON ?= python3
VENV   := .venv
BIN    := $(abspath $(VENV))/bin
STAMP  := $(VENV)/.installed
CORES  ?= all
export PATH := $(BIN):$(PATH)

.PHONY: install demo test test-fast dryrun lint report report-zip clean-demo

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

## Regenerate result tables and figures from the saved metrics (no retraining), then results/report.zip.
# (each into results/<its experiment name>, e.g. zhu2021_archives.yaml -> results/zhu2021)
REPORT_CONFIGS := config/demo.yaml config/demo_multimodal.yaml $(addprefix config/papers/,he2022.yaml he2022/studies/steps_300.yaml he2022/studies/steps_1000.yaml he2022/studies/steps_4000.yaml \
	he2022/studies/clip.yaml he2022/studies/clip_8000.yaml he2022/studies/ce_logits.yaml he2022/studies/clip_allpairs.yaml \
	he2022/studies/clip_allpairs_seed1.yaml he2022/studies/clip_allpairs_seed2.yaml zhu2021_archives.yaml \
	ding2021_demo.yaml ding2021_brats_case.yaml huang2021_demo.yaml huang2021/studies/small_deformation.yaml huang2021/studies/steps_500.yaml huang2021/studies/large_deformation.yaml \
	huang2021_brats_case.yaml cai2023_demo.yaml)

# ... and Snakemake's report of them: one browsable results/report.zip (category per paper, subcategory per table
# or figure, labels per experiment and dataset); files made outside this working tree only warn "Missing metadata"
REPORT_ZIP_RULES := $(foreach c,$(REPORT_CONFIGS),report_$(shell sed -n 's/^experiment: *//p' $(c) | head -n 1 | sed 's|/|__|g'))

report: $(STAMP)
	set -e; for c in $(REPORT_CONFIGS); do \
		$(BIN)/regbench report --config $$c; done
	$(BIN)/regbench results-index
	$(MAKE) --no-print-directory report-zip

## Only results/report.zip, from the tables and figures as they are.
report-zip: $(STAMP)
	mkdir -p logs
	$(BIN)/snakemake $(REPORT_ZIP_RULES) --report results/report.zip --nolock --configfile config/config.yaml \
		> logs/report_zip.log 2>&1 || { tail -n 40 logs/report_zip.log; exit 1; }
	@echo "wrote results/report.zip (log: logs/report_zip.log)"

clean-demo: $(STAMP)
	rm -rf $$($(BIN)/regbench store-paths --config config/demo.yaml) data/prep/demo work/demo logs/demo benchmarks/demo
