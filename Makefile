# The two commands of the README: `make train` (set up, train on the RAVDESS copy, classify a clip) and
# `make test` (set up, run the test suite). Both start from a fresh clone.
VENV ?= .venv
DATA ?= ../shared/data/ravdess
OUT ?= runs/ravdess
CLIP ?= $(DATA)/wav/Actor_01/03-01-05-02-01-01-01.wav
PYTEST_ARGS ?=
# training processes: one per core, at most 8 (each trains whole folds on one thread, about 0.9 GB each); the
# folds' predictions are the same on any number (tests/test_distributed.py)
NUM_PROCESSES ?= $(shell n=$$(nproc 2>/dev/null || echo 1); echo $$(( n < 8 ? n : 8 )))
MULTI = $(if $(filter 1,$(NUM_PROCESSES)),,--multi_gpu)

.PHONY: setup test train lint

setup:
	bash scripts/setup.sh

test: setup
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

train: setup
	ACCELERATE_USE_CPU=true $(VENV)/bin/accelerate launch $(MULTI) --num_processes $(NUM_PROCESSES) \
		--num_machines 1 --mixed_precision no --dynamo_backend no \
		training/train.py training/configs/mise.yaml training/configs/corpora/ravdess.yaml \
		--output_dir $(OUT) --data_dir $(DATA)
	$(VENV)/bin/mise classify $(OUT)/models/mise-audio-classifier $(CLIP)

lint:
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .
