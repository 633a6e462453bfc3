# Ego4D LTA: extract once, train heads in minutes. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ARCH := $(shell uname -m)
ifeq ($(ARCH),aarch64)
TORCH_PINS := torch==2.9.1 torchvision==0.24.1
else
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
endif

DATA ?= data/long_term_anticipation
STORE ?= cache/features
RUN ?= runs/slowfast_transformer
CONFIG ?= pipelines/configs/slowfast_transformer.yaml
ARGS ?=
# the suite runs in TEST_WORKERS pytest-xdist processes (one per core, at most 8), whole files per worker (module
# fixtures built once), torch on one thread in each; the 15 slowest tests are printed at the end
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 2); echo $$(( n < 8 ? n : 8 )))
PYTEST := OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=15

.DEFAULT_GOAL := help
.PHONY: help setup demo test test-fast resize extract train-heads evaluate predict sweep report bench bench-gpu slurm-up slurm-down clean

help: ## list the targets with one line each
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH_PINS)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP) ## create .venv and install everything (no-op when done)

demo: $(STAMP) ## run the whole pipeline on a bundled synthetic sample on the CPU
	$(BIN)/lta demo out=demo_out $(ARGS)

test: $(STAMP) ## run the test suite (CPU, no downloads; TEST_WORKERS processes)
	$(PYTEST) $(ARGS)

test-fast: $(STAMP) ## the edit-run loop: the tests not marked slow
	$(PYTEST) -m "not slow" $(ARGS)

resize: $(STAMP) ## resize clips_hq -> clips (short side 320), DATA=...
	$(BIN)/lta resize data=$(DATA) $(ARGS)

extract: $(STAMP) ## extract embeddings into the feature store, DATA=... STORE=...
	$(BIN)/lta extract data=$(DATA) store=$(STORE) $(ARGS)

train-heads: $(STAMP) ## train a forecasting head on cached features, CONFIG=... RUN=...
	$(BIN)/lta train-heads config=$(CONFIG) data=$(DATA) store=$(STORE) out=$(RUN) $(ARGS)

evaluate: $(STAMP) ## ED@20 of a run and the no-training baselines on val, RUN=...
	$(BIN)/lta evaluate run=$(RUN) split=val $(ARGS)

predict: $(STAMP) ## write RUN/outputs.json, the challenge file of the test split (ARGS=overwrite=true replaces it), RUN=...
	$(BIN)/lta predict run=$(RUN) split=test $(ARGS)

sweep: $(STAMP) ## train several head configs over one cache, table sorted by val ED
	$(BIN)/lta sweep data=$(DATA) store=$(STORE) $(ARGS)

report: $(STAMP) ## write RUN/report.html, the HTML report of the val predictions (ARGS=overwrite=true replaces it), RUN=...
	$(BIN)/lta report run=$(RUN) split=val $(ARGS)

bench-gpu: $(STAMP) ## the prepared GPU benchmark (README "GPU figures"): one run, 480 s budget, bench_out/gpu/
	$(BIN)/python bench/gpu.py $(ARGS)

bench: $(STAMP) ## run the benchmarks in bench/ (prints the README tables)
	for b in bench/*.py; do $(BIN)/python $$b || exit 1; done

slurm-up: ## start a one-node SLURM cluster on this machine (root; installs slurm-wlm + munge), docs/cluster.md
	tools/slurm-up

slurm-down: ## stop the daemons slurm-up started (slurmd, slurmctld, munged)
	tools/slurm-down

clean: ## remove demo outputs (keeps .venv)
	rm -rf demo_out
