# slimpipe: `make compress` sets everything up and runs the default pipeline; `make test` runs
# the tests. Make variables map 1:1 to `slimpipe compress` options.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
MODEL ?= cnn
DATASET ?= fashion_mnist
RECIPE ?= default
OUT ?=
EPOCHS ?=
LIMIT ?=
WIDTH ?=
SEED ?=
DATA_DIR ?=
IMAGE_SIZE ?=
INPUT_RANGE ?=
TEST_SPLIT ?=
SKIP_BAD_IMAGES ?=
DISTRIBUTE ?=
WORKERS ?=
TASK ?=
MAX_DROP ?=
OBJECTIVE ?=
TRIALS ?=
TIME_BUDGET ?=
VALIDATION ?=
TRIAL_EPOCHS ?=
JOBS ?=
TRIAL_SLACK ?=
CANDIDATES ?=
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

ARGS = --model $(MODEL) --dataset $(DATASET) --recipe $(RECIPE) \
	$(if $(OUT),--out $(OUT)) $(if $(EPOCHS),--epochs $(EPOCHS)) $(if $(LIMIT),--limit $(LIMIT)) \
	$(if $(WIDTH),--width $(WIDTH)) $(if $(SEED),--seed $(SEED)) $(if $(DATA_DIR),--data-dir $(DATA_DIR)) \
	$(if $(IMAGE_SIZE),--image-size $(IMAGE_SIZE)) $(if $(INPUT_RANGE),--input-range $(INPUT_RANGE)) \
	$(if $(TEST_SPLIT),--test-split $(TEST_SPLIT)) $(if $(SKIP_BAD_IMAGES),--skip-bad-images) \
	$(if $(DISTRIBUTE),--distribute $(DISTRIBUTE)) $(if $(WORKERS),--workers $(WORKERS)) \
	$(if $(TASK),--task $(TASK)) $(if $(MAX_DROP),--max-drop $(MAX_DROP)) \
	$(if $(OBJECTIVE),--objective $(OBJECTIVE)) $(if $(TRIALS),--trials $(TRIALS)) \
	$(if $(TIME_BUDGET),--time-budget $(TIME_BUDGET)) $(if $(VALIDATION),--validation $(VALIDATION)) \
	$(if $(TRIAL_EPOCHS),--trial-epochs $(TRIAL_EPOCHS)) $(if $(JOBS),--jobs $(JOBS)) \
	$(if $(TRIAL_SLACK),--trial-slack $(TRIAL_SLACK)) $(if $(CANDIDATES),--candidates $(CANDIDATES))

REPORT ?= $(if $(OUT),$(OUT),runs/$(MODEL)-$(DATASET))/report.json
GATE_ARGS ?=
# `make results`: the runs whose tables docs/benchmarks.md shows (default: every run in runs/).
RUNS ?= $(patsubst %/report.json,%,$(sort $(wildcard runs/*/report.json)))
RESULTS ?= docs/benchmarks.md

.PHONY: setup data compress test test-deps bench targets gate results clean

setup: $(VENV)/.installed data

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

# Fashion-MNIST, the default data set, comes from Debian's package where apt is available (as
# root); elsewhere slimpipe finds it in $SLIMPIPE_DATA_DIR or the Keras cache, or downloads it.
data:
	@if [ -f $(FASHION_MNIST) ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	else echo "note: Debian's dataset-fashion-mnist is not installed (needs root: apt-get install dataset-fashion-mnist);" \
	  "slimpipe will look in \$$SLIMPIPE_DATA_DIR and the Keras cache, then try to download it."; fi

compress: setup
	$(BIN)/slimpipe compress $(ARGS)

# The HTML report's browser test needs Debian's chromium and chromedriver.
test-deps:
	@if [ ! -x /usr/bin/chromedriver ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; fi

# Test processes in parallel (pytest-xdist); TEST_WORKERS=0 runs them in this process.
TEST_WORKERS ?= 2
test: setup test-deps
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --durations=15

gate: setup
	$(BIN)/slimpipe gate --report $(REPORT) --recipe $(RECIPE) $(GATE_ARGS) \
	  --junit $(dir $(REPORT))gate.xml --summary $(dir $(REPORT))gate.md

bench: setup
	$(BIN)/python -m pytest benchmarks -q --benchmark-only

# The product's measured targets (benchmarks/targets.toml), each checked against its run's report
# in runs/ (or $$SLIMPIPE_TARGET_RUNS); a target without its run is skipped with the command that makes it.
targets: $(VENV)/.installed
	$(BIN)/python -m pytest benchmarks/bench_targets.py -q -rs -p no:cacheprovider

# Stamped result tables from finished runs' report.json files (slimpipe results RUN ...).
results: $(VENV)/.installed
	@if [ -z "$(strip $(RUNS))" ]; then echo "make results: no runs: give RUNS=\"runs/a runs/b\" (folders with a report.json)" >&2; exit 2; fi
	$(BIN)/slimpipe results $(RUNS) --out $(RESULTS)

clean:
	rm -rf runs .pytest_cache .benchmarks
