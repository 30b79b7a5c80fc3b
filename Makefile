# Hydra overrides pass straight through:  make train model=rnn_attention trainer.max_epochs=5
# (make sees them as variable assignments; MAKEOVERRIDES hands them on to Hydra).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.13.0
# the environment is a target: built when missing, rebuilt when pyproject.toml is newer than it
ENV    := $(VENV)/.installed
HYDRA_ARGS = $(filter-out RUN=% RUNS=% OUT=% EXPERIMENT=% TORCH=% VENV=% PYTHON=% HOST=% PORT=% NPROC=% SEEDS=% UPDATES=%,$(MAKEOVERRIDES))
EXPERIMENT ?= bottleneck
# TensorBoard listens here; only a command-line HOST=… counts (shells export HOST as the machine's name)
HOST := $(if $(filter command line,$(origin HOST)),$(HOST),localhost)
PORT ?= 6006
OUT ?= runs/report
# each lever off, after the three rows with every lever on, all in one run (ratios only within one run);
# TRANSLATE_MALLOC=system: glibc's malloc instead of tcmalloc, trimmed after each step unless release_memory=false
LEVER_SETTINGS = "model=transformer_ref trainer.precision=fp32" "model=transformer_ref trainer.precision=bf16" "model=rnn_attention_ref trainer.precision=fp32" \
	"model=transformer_ref trainer.precision=fp32 trainer.adam_impl=for_loop" "model=transformer_ref trainer.precision=fp32 trainer.adam_impl=foreach" \
	"model=transformer_ref trainer.precision=fp32 trainer.threads=1" "model=transformer_ref trainer.precision=fp32 batching=random" \
	"model=transformer_ref trainer.precision=fp32 model.attention_dropout=0.1" \
	"model=transformer_ref trainer.precision=fp32 trainer.loss_chunk=0" "model=transformer_ref trainer.precision=bf16 trainer.loss_chunk=0" \
	"model=rnn_attention_ref trainer.precision=fp32 batching=random" "model=rnn_attention_ref trainer.precision=fp32 trainer.adam_impl=for_loop" \
	"model=rnn_attention_ref trainer.precision=fp32 trainer.loss_chunk=0" \
	"TRANSLATE_MALLOC=system model=transformer_ref trainer.precision=fp32" "TRANSLATE_MALLOC=system model=transformer_ref trainer.precision=bf16" \
	"TRANSLATE_MALLOC=system model=transformer_ref trainer.precision=bf16 trainer.release_memory=false" \
	"TRANSLATE_MALLOC=system model=rnn_attention_ref trainer.precision=fp32"

.PHONY: help install prepare train eval translate export average compare report bench bench-peers levers tensorboard test test-fast lint clean
.DEFAULT_GOAL := help

help:  ## this list
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:[^#]*## /\t/' | expand -t 14

$(ENV): pyproject.toml
	@echo "setting up $(VENV) (PyTorch: $(TORCH))"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[dev]"
	@$(PY) -c "from translate.runtime.allocator import find_tcmalloc as f, INSTALL_HINT as h; print('tcmalloc:', f() or h)"
	touch $@

install:  ## (re)build the environment; TORCH=torch for your platform's default (CUDA) build
	$(MAKE) --no-print-directory --always-make $(ENV)

prepare: $(ENV)  ## make prepare [data=…]: tokenizer + memory-mapped token store of a corpus (training reuses both)
	$(PY) -m translate.prepare $(HYDRA_ARGS)

train: $(ENV)  ## train the default model (Transformer, Multi30k de->en); any Hydra override; NPROC=N: N ranks (torchrun)
	$(if $(NPROC),TRANSLATE_LAUNCH_TIME=$$(date +%s) $(VENV)/bin/torchrun --standalone --nproc_per_node=$(NPROC),$(PY)) \
		-m translate.train $(HYDRA_ARGS)

eval: $(ENV)  ## make eval RUN=<run dir> [eval.src=… eval.ref=…]: sacreBLEU, chrF, BLEU by length
	@test -n "$(RUN)" || { echo "usage: make eval RUN=<run dir> [eval.checkpoint=last] [eval.src=F eval.ref=F]"; exit 2; }
	$(PY) -m translate.evaluate run=$(RUN) $(HYDRA_ARGS)

translate: $(ENV)  ## make translate RUN=<run dir> [eval.beam_size=5] [attention=a.png] [engine=ct2] < in.txt > out.txt
	@test -n "$(RUN)" || { echo "usage: make translate RUN=<run dir> [eval.beam_size=5] [attention=out.png] [engine=ct2 [quantization=int8]] < in.txt > out.txt" >&2; exit 2; }
	@$(PY) -m translate.translate run=$(RUN) $(HYDRA_ARGS)

export: $(ENV)  ## make export RUN=<run dir> [quantization=int8] [checkpoint=last]: a Transformer as a CTranslate2 model, <run>/ct2[-<q>]/
	@test -n "$(RUN)" || { echo "usage: make export RUN=<run dir> [quantization=int8|int8_float32|float16|none] [checkpoint=best|last|averaged]"; exit 2; }
	$(PY) -m translate.export run=$(RUN) $(HYDRA_ARGS)

average: $(ENV)  ## make average RUN=<run dir> [last=5] [out=averaged]: mean weights of the newest numbered checkpoints
	@test -n "$(RUN)" || { echo "usage: make average RUN=<run dir> [last=5] [out=averaged]"; exit 2; }
	$(PY) -m translate.average run=$(RUN) $(HYDRA_ARGS)

compare: $(ENV)  ## the three models, same data and budget (configs/experiment/$(EXPERIMENT).yaml) + report; SEEDS=3: each with 3 seeds
	$(PY) -m translate.train +experiment=$(EXPERIMENT) $(HYDRA_ARGS) $(if $(SEEDS),trainer.seed=$$(seq -s, 1234 $$((1233 + $(SEEDS)))))

report: $(ENV)  ## make report RUNS="<run dirs>" [OUT=dir]: redraw the comparison from finished runs
	@test -n "$(RUNS)" || { echo 'usage: make report RUNS="runs/a runs/b" [OUT=runs/report]'; exit 2; }
	$(PY) -m translate.report $(RUNS) --out $(OUT)

bench: $(ENV)  ## make bench [RUNS="<trained run dirs>"]: training tok/s, MFU, memory (+ decoding speed of RUNS) -> docs/bench/benchmark.{md,json}
	$(PY) scripts/benchmark.py $(RUNS)

bench-peers: $(ENV)  ## this project against JoeyNMT 2.3 in one run (its own venv in data/cache/peers) -> docs/bench/peers.{md,json}
	$(PY) scripts/bench_peers.py $(if $(UPDATES),--updates $(UPDATES))

levers: $(ENV)  ## each speed lever on and off (docs/performance.md) -> docs/bench/levers.{md,json}, docs/bench/levers_train.{md,json}
	$(PY) scripts/levers.py
	$(PY) scripts/benchmark.py --out docs/bench/levers_train --train $(LEVER_SETTINGS)

tensorboard: $(ENV)  ## serve every run under runs/ on this machine only; HOST=0.0.0.0 serves the network
	@echo "TensorBoard on http://$(HOST):$(PORT)/ (runs/)"
	$(VENV)/bin/tensorboard --logdir runs --host $(HOST) --port $(PORT)

test: $(ENV)  ## the whole test suite (CI's), two workers
	$(PY) -m pytest -q -n 2

test-fast: $(ENV)  ## the quick tier: every test but the slow ones (training, processes, installs), for the inner loop
	$(PY) -m pytest -q -n 2 -m "not slow"

lint: $(ENV)  ## ruff: lint and format check
	$(VENV)/bin/ruff check translate tests scripts
	$(VENV)/bin/ruff format --check translate tests scripts

clean:
	rm -rf outputs multirun .pytest_cache
