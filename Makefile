# The two commands of the README: `make train` (set up, train on the RAVDESS copy, classify a clip) and
# `make test` (set up, run the test suite). Both start from a fresh clone.
VENV ?= .venv
DATA ?= ../shared/data/ravdess
OUT ?= runs/ravdess
CLIP ?= $(DATA)/wav/Actor_01/03-01-05-02-01-01-01.wav
PYTEST_ARGS ?=

.PHONY: setup test train lint

setup:
	bash scripts/setup.sh

test: setup
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

train: setup
	$(VENV)/bin/accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
		training/train.py training/configs/mise.yaml training/configs/corpora/ravdess.yaml \
		--output_dir $(OUT) --data_dir $(DATA)
	$(VENV)/bin/mise classify $(OUT)/models/mise-audio-classifier $(CLIP)

lint:
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .
