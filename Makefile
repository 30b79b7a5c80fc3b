# Hydra overrides pass straight through:  make train model=rnn_attention trainer.max_epochs=5
# (make sees them as variable assignments; MAKEOVERRIDES hands them on to Hydra, each one a shell word).
# Every value reaches a command as data, never as code: make takes each variable as given ($(value …): a `$` in it
# stays a `$`), every word a command gets is shell-quoted, RUN goes to Hydra as a quoted string, and NPROC, SEEDS,
# UPDATES and PORT must be digits.
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
EXPERIMENT ?= bottleneck
# TensorBoard listens here; only a command-line HOST=… counts (shells export HOST as the machine's name)
HOST := $(if $(filter command line,$(origin HOST)),$(value HOST),localhost)
PORT ?= 6006
OUT ?= runs/report

# make exports a command-line variable to the recipes' environment expanded (a `$(shell …)` in it would run):
# one whose value holds a `$` is not exported
$(foreach v,$(.VARIABLES),$(if $(filter command line,$(origin $(v))),$(if $(findstring $$,$(value $(v))),$(eval unexport $(v)))))

# Quoting, all of it done by make (the internal names are `override`: a command line cannot redefine them).
# $(call sh,TEXT): TEXT as one shell word, '…' with each ' written '\''; no newline (make would end the command there)
override sh = $(if $(findstring $(_nl),$(1)),$(error error: a value holds a newline; give it without),'$(subst ','\'',$(1))')
override define _nl


endef
# $(call hydra,TEXT): TEXT as a Hydra quoted string that Hydra and OmegaConf read back as TEXT: '…' where a ' is \',
# a ${ is \${ (text, not an interpolation), and the backslashes right before either, or at the end, are doubled
override hydra = $(call _no_ctl,$(1))'$(subst $(_P),,$(call _double_before_P,$(subst $(_DB),$(_P)\$(_DB),$(subst ',$(_P)\',$(1)))$(_P)))'
override _double_before_P = $(if $(findstring \$(_P),$(1)),$(call _double_before_P,$(subst \$(_P),$(_P)\\,$(1))),$(1))
override _DB := $${
# control characters, place-holders while a text is rewritten (so no value may hold them); a tab
override _ctl := $(shell printf '\034 \035 \036 \037')
override _no_ctl = $(if $(strip $(foreach c,$(_ctl),$(findstring $(c),$(1)))),$(error error: a value holds a control character 034-037 (octal); give it without))
override _P := $(word 1,$(_ctl))
override _B := $(word 2,$(_ctl))
override _S := $(word 3,$(_ctl))
override _T := $(word 4,$(_ctl))
override _tab := $(shell printf '\t')
# $(call number,NAME): NAME's value, digits (else a one-line error, exit 2)
override number = $(if $(call _not_digits,$(value $(1))),$(error error: $(1)=$(value $(1)): not a number; give $(1)=<digits>),$(value $(1)))
override _not_digits = $(if $(1),$(subst 0,,$(subst 1,,$(subst 2,,$(subst 3,,$(subst 4,,$(subst 5,,$(subst 6,,$(subst 7,,$(subst 8,,$(subst 9,,$(1))))))))))),empty)
# VENV names make targets: letters, digits and / . _ - + , @ only
override _plain := a b c d e f g h i j k l m n o p q r s t u v w x y z A B C D E F G H I J K L M N O P Q R S T U V W X Y Z \
	0 1 2 3 4 5 6 7 8 9 / . _ - + , @
override _strip = $(if $(2),$(call _strip,$(subst $(firstword $(2)),,$(1)),$(wordlist 2,$(words $(2)),$(2))),$(1))
$(if $(and $(value VENV),$(if $(call _strip,$(value VENV),$(_plain)),,ok)),,$(error error: VENV=$(value VENV): not a plain path; give VENV=<letters, digits, / . _ - + , @>))

override PY  := $(call sh,$(value VENV)/bin/python)
# the project's commands (pyproject.toml's [project.scripts]): translate <command> [settings]
override TRANSLATE := $(call sh,$(value VENV)/bin/translate)
# the environment is a target: built when missing, rebuilt when pyproject.toml is newer than it
override ENV := $(value VENV)/.installed
# the command line's Hydra overrides, each one shell word. MAKEOVERRIDES writes a \ as \\, a space or tab as \<it>,
# a $ as $$ and parts words with spaces (a newline, CR, VT or FF in an override's value parts it too)
override _make_vars := RUN RUNS OUT EVAL EXPERIMENT TORCH VENV PYTHON HOST PORT NPROC SEEDS UPDATES
override _overrides = $(filter-out $(addsuffix =%,$(_make_vars)) $(addsuffix :=%,$(_make_vars)), \
	$(subst \$(_tab),$(_T),$(subst \ ,$(_S),$(subst \\,$(_B),$(MAKEOVERRIDES)))))
override HYDRA_ARGS = $(call _no_ctl,$(MAKEOVERRIDES))$(foreach a,$(_overrides),$(call sh,$(subst $$$$,$$,$(subst $(_B),\,$(subst $(_S), ,$(subst $(_T),$(_tab),$(a)))))))
# the run directory as Hydra's run=…, and the report's run directories (RUNS parts at spaces), each a shell word
override RUN_ARG = $(call sh,run=$(call hydra,$(value RUN)))
override RUN_DIRS = $(foreach r,$(value RUNS),$(call sh,$(r)))
# RUNS as a Hydra list, runs=['a','b'] (its words carry no spaces: commas join them)
override _space := $() $()
override RUNS_ARG = $(call sh,runs=[$(subst $(_space),$(comma),$(strip $(foreach r,$(value RUNS),$(call hydra,$(r)))))])
override comma := ,
# each lever off, after the three rows with every lever on, all in one run (ratios only within one run);
# TRANSLATE_MALLOC=system: glibc's malloc instead of tcmalloc, trimmed after each step unless release_memory=false
override LEVER_SETTINGS = "model=transformer_ref trainer.precision=fp32" "model=transformer_ref trainer.precision=bf16" "model=rnn_attention_ref trainer.precision=fp32" \
	"model=transformer_ref trainer.precision=fp32 trainer.adam_impl=for_loop" "model=transformer_ref trainer.precision=fp32 trainer.adam_impl=foreach" \
	"model=transformer_ref trainer.precision=fp32 trainer.threads=1" "model=transformer_ref trainer.precision=fp32 batching=random" \
	"model=transformer_ref trainer.precision=fp32 model.attention_dropout=0.1" \
	"model=transformer_ref trainer.precision=fp32 trainer.loss_chunk=0" "model=transformer_ref trainer.precision=bf16 trainer.loss_chunk=0" \
	"model=rnn_attention_ref trainer.precision=fp32 batching=random" "model=rnn_attention_ref trainer.precision=fp32 trainer.adam_impl=for_loop" \
	"model=rnn_attention_ref trainer.precision=fp32 trainer.loss_chunk=0" \
	"TRANSLATE_MALLOC=system model=transformer_ref trainer.precision=fp32" "TRANSLATE_MALLOC=system model=transformer_ref trainer.precision=bf16" \
	"TRANSLATE_MALLOC=system model=transformer_ref trainer.precision=bf16 trainer.release_memory=false" \
	"TRANSLATE_MALLOC=system model=rnn_attention_ref trainer.precision=fp32"

.PHONY: help install prepare train eval translate export average compare report significance bench bench-peers levers tensorboard test test-fast lint gpu-check serve clean
.DEFAULT_GOAL := help

help:  ## this list
	@grep -E '^[a-z-]+:.*## ' $(foreach f,$(MAKEFILE_LIST),$(call sh,$(f))) | sed -E 's/:[^#]*## /\t/' | expand -t 14

$(ENV): pyproject.toml
	@printf '%s\n' $(call sh,setting up $(value VENV) (PyTorch: $(value TORCH)))
	$(call sh,$(value PYTHON)) -m venv $(call sh,$(value VENV))
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(call sh,$(value TORCH))
	$(PY) -m pip install --quiet -e ".[dev]"
	@$(PY) -c "from translate.runtime.allocator import find_tcmalloc as f, INSTALL_HINT as h; print('tcmalloc:', f() or h)"
	touch $(call sh,$@)

install:  ## (re)build the environment; TORCH=torch for your platform's default (CUDA) build
	$(MAKE) --no-print-directory --always-make $(call sh,$(ENV))

prepare: $(ENV)  ## make prepare [data=…]: tokenizer + memory-mapped token store of a corpus (training reuses both)
	$(TRANSLATE) prepare $(HYDRA_ARGS)

# NPROC=N: torchrun, its gloo sockets on the loopback interface unless GLOO_SOCKET_IFNAME says otherwise
train: $(ENV)  ## train the default model (Transformer, Multi30k de->en); any Hydra override; NPROC=N: N ranks (torchrun)
	$(if $(value NPROC),TRANSLATE_LAUNCH_TIME=$$(date +%s) GLOO_SOCKET_IFNAME=$${GLOO_SOCKET_IFNAME:-lo} $(call sh,$(value VENV)/bin/torchrun) --standalone --nproc_per_node=$(call number,NPROC) -m translate,$(TRANSLATE)) \
		train $(HYDRA_ARGS)

eval: $(ENV)  ## make eval RUN=<run dir> [eval.src=… eval.ref=…]: BLEU, chrF, chrF++, TER, BLEU by length
	@test -n $(call sh,$(value RUN)) || { echo "usage: make eval RUN=<run dir> [eval.checkpoint=last] [eval.src=F eval.ref=F]"; exit 2; }
	$(TRANSLATE) eval $(RUN_ARG) $(HYDRA_ARGS)

translate: $(ENV)  ## make translate RUN=<run dir> [eval.beam_size=5] [attention=a.png] [engine=ct2] < in.txt > out.txt
	@test -n $(call sh,$(value RUN)) || { echo "usage: make translate RUN=<run dir> [eval.beam_size=5] [attention=out.png] [engine=ct2 [quantization=int8]] < in.txt > out.txt" >&2; exit 2; }
	@$(TRANSLATE) translate $(RUN_ARG) $(HYDRA_ARGS)

export: $(ENV)  ## make export RUN=<run dir> [quantization=int8] [checkpoint=last] [format=hf]: a Transformer for CTranslate2, <run>/ct2[-<q>]/, or transformers, <run>/hf/
	@test -n $(call sh,$(value RUN)) || { echo "usage: make export RUN=<run dir> [quantization=int8|int8_float32|float16|none] [checkpoint=best|last|averaged] [format=ct2|hf]"; exit 2; }
	$(TRANSLATE) export $(RUN_ARG) $(HYDRA_ARGS)

average: $(ENV)  ## make average RUN=<run dir> [last=5] [out=averaged]: mean weights of the newest numbered checkpoints
	@test -n $(call sh,$(value RUN)) || { echo "usage: make average RUN=<run dir> [last=5] [out=averaged]"; exit 2; }
	$(TRANSLATE) average $(RUN_ARG) $(HYDRA_ARGS)

compare: $(ENV)  ## the three models, same data and budget (configs/experiment/$(EXPERIMENT).yaml) + report; SEEDS=3: each with 3 seeds
	$(TRANSLATE) train $(call sh,+experiment=$(call hydra,$(value EXPERIMENT))) $(HYDRA_ARGS) \
		$(if $(value SEEDS),"trainer.seed=$$(seq -s, 1234 $$((1233 + $(call number,SEEDS))))")

report: $(ENV)  ## make report RUNS="<run dirs>" [OUT=dir] [EVAL=valid]: redraw the comparison from finished runs (RUNS: space-separated, no spaces in a dir)
	@test -n $(call sh,$(strip $(value RUNS))) || { echo 'usage: make report RUNS="runs/a runs/b" [OUT=runs/report] (RUNS: space-separated, so a run dir cannot contain spaces)'; exit 2; }
	$(TRANSLATE) report $(call sh,--out=$(value OUT)) $(if $(value EVAL),$(call sh,--eval=$(value EVAL))) -- $(RUN_DIRS)

# OUT as given, else the command's own default (runs/significance), not the report's
significance: $(ENV)  ## make significance RUNS="<baseline run> <runs>" [OUT=dir]: paired tests (sacreBLEU) of each run against the first
	@test -n $(call sh,$(strip $(value RUNS))) || { echo 'usage: make significance RUNS="runs/a runs/b" [OUT=runs/significance] (RUNS: evaluated runs, the baseline first, space-separated)'; exit 2; }
	$(TRANSLATE) significance $(if $(filter-out file,$(origin OUT)),$(call sh,--out=$(value OUT))) -- $(RUN_DIRS)

bench: $(ENV)  ## make bench [RUNS="<trained run dirs>"]: training tok/s, MFU, memory (+ decoding speed of RUNS) -> docs/bench/benchmark.{md,json}
	$(PY) scripts/benchmark.py -- $(RUN_DIRS)

bench-peers: $(ENV)  ## this project against JoeyNMT 2.3 in one run (its own venv in data/cache/peers) -> docs/bench/peers.{md,json}
	$(PY) scripts/bench_peers.py $(if $(value UPDATES),--updates $(call number,UPDATES))

levers: $(ENV)  ## each speed lever on and off (docs/performance.md) -> docs/bench/levers.{md,json}, docs/bench/levers_train.{md,json}
	$(PY) scripts/levers.py
	$(PY) scripts/benchmark.py --out docs/bench/levers_train --train $(LEVER_SETTINGS)

serve: $(ENV)  ## make serve RUN=<run> [RUNS="<run> …"] [HOST=…] [PORT=8000]: HTTP API and a page comparing translations and attention
	@test -n $(call sh,$(strip $(value RUN) $(value RUNS))) || { echo 'usage: make serve RUN=<run dir> [RUNS="<run dir> …"] [HOST=127.0.0.1] [PORT=8000] [eval.beam_size=5]'; exit 2; }
	$(TRANSLATE) serve $(if $(value RUN),$(RUN_ARG)) $(if $(strip $(value RUNS)),$(RUNS_ARG)) \
		$(call sh,host=$(call hydra,$(if $(filter command line,$(origin HOST)),$(value HOST),127.0.0.1))) \
		port=$(if $(filter command line,$(origin PORT)),$(call number,PORT),8000) $(HYDRA_ARGS)

tensorboard: $(ENV)  ## serve every run under runs/ on this machine only; HOST=0.0.0.0 serves the network
	@printf '%s\n' $(call sh,TensorBoard on http://$(value HOST):$(call number,PORT)/ (runs/))
	$(call sh,$(value VENV)/bin/tensorboard) --logdir runs --host $(call sh,$(value HOST)) --port $(call number,PORT)

test: $(ENV)  ## the whole test suite (CI's), two workers
	$(PY) -m pytest -q -n 2

test-fast: $(ENV)  ## the quick tier: every test but the slow ones (training, processes, installs), for the inner loop
	$(PY) -m pytest -q -n 2 -m "not slow"

lint: $(ENV)  ## ruff: lint and format check
	$(call sh,$(value VENV)/bin/ruff) check translate tests scripts
	$(call sh,$(value VENV)/bin/ruff) format --check translate tests scripts

gpu-check:  ## the prepared GPU check (issue: docs/gpu.md): bash scripts/gpu_check.sh
	bash scripts/gpu_check.sh

clean:
	rm -rf outputs multirun .pytest_cache
