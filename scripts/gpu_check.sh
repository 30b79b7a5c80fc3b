#!/usr/bin/env bash
# The one prepared GPU check (docs/gpu.md): on one NVIDIA GPU, in at most 8 minutes, with no network.
#
#   bash scripts/gpu_check.sh                 (make gpu-check) on the device machine, after scripts/fetch_gpu_wheels.sh
#   GPU_CHECK_DRY=1 bash scripts/gpu_check.sh  the same steps shrunk to seconds on a CPU: proves the plumbing only
#
# Sections, each under `timeout` and inside one budget (GPU_CHECK_BUDGET_S, default 450 s; a section that would not
# fit is skipped and says so):
#   preflight  nvidia-smi and torch.cuda, else stop at once (exit 3); GPU, driver, torch, CUDA, cuDNN, NCCL versions
#   install    the carried wheels (.whl/) into $GPU_CHECK_SITE (/tmp/site) on PYTHONPATH, the project by PYTHONPATH
#   tests      pytest -m cuda tests/test_cuda.py (JUnit XML)
#   bench      scripts/benchmark.py's bench_train: target tokens/s, MFU, peak GPU memory, GPU utilisation over the
#              timed steps, for the default Transformer, transformer_base (bf16 and fp16) and transformer_big
#   peers      scripts/bench_peers.py's two sides on this GPU: the reference Transformer here (bf16, fp16) and
#              JoeyNMT 2.3 (fp16), 300 updates each, then greedy and beam-5 decoding of the test split
#   ttb        time to BLEU: `make train trainer=gpu` on Multi30k for about a minute, its validation BLEU by
#              minute, and decoding of its test split (greedy, beam 5) through scripts/benchmark.py
#   report     everything into $OUT: gpu_check.log, gpu_figures.json, gpu.md (docs/gpu.md with its results filled
#              in), pytest_cuda.xml, logs.tar.gz; a summary on stdout
# Exit status: 0 all sections ran and every test passed, 1 otherwise, 3 no GPU.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DRY=${GPU_CHECK_DRY:-0}
if [ "$DRY" = 1 ]; then BUDGET=${GPU_CHECK_BUDGET_S:-240}; else BUDGET=${GPU_CHECK_BUDGET_S:-450}; fi
OUT=${OUT:-$ROOT/runs/gpu_check}
mkdir -p "$OUT"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
if [ "$DRY" = 1 ]; then SITE=${GPU_CHECK_SITE:-$WORK/site}; else SITE=${GPU_CHECK_SITE:-/tmp/site}; fi
PY=${PYTHON:-python3}
[ "$DRY" = 1 ] && [ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ] && PY=$ROOT/.venv/bin/python
PY=$(command -v "$PY")
export GPU_CHECK_DRY=$DRY GPU_CHECK_WORK=$WORK GPU_CHECK_OUT=$OUT GPU_CHECK_BUDGET_S=$BUDGET
export TRANSLATE_DATA_DIR=$ROOT/.gpu/data/multi30k PYTHONUNBUFFERED=1 HYDRA_FULL_ERROR=1
exec > >(tee "$OUT/gpu_check.log") 2>&1
TEE=$!
START=$SECONDS
echo "gpu_check: $(date -u +%Y-%m-%dT%H:%M:%SZ), dry=$DRY, budget ${BUDGET}s, work $WORK, out $OUT, python $PY"

# section NAME CAP COMMAND...: COMMAND under `timeout`, at most CAP seconds and what the budget has left
section() {
  local name=$1 cap=$2 left limit started rc status
  shift 2
  left=$((BUDGET - (SECONDS - START)))
  limit=$((cap < left - 5 ? cap : left - 5))
  if ((limit < 20)); then
    echo "== $name: skipped, out of time (${left}s of ${BUDGET}s left)"
    printf '%s\tskipped (out of time)\t0\t%s\n' "$name" "$cap" >>"$WORK/sections.tsv"
    return 1
  fi
  echo "== $name (at most ${limit}s; ${left}s of ${BUDGET}s left)"
  started=$SECONDS
  GPU_CHECK_LIMIT_S=$limit timeout --kill-after=10 "$limit" "$@"
  rc=$?
  case $rc in
    0) status=ok ;;
    124 | 137) status="timed out after ${limit}s" ;;
    *) status="failed (exit $rc)" ;;
  esac
  echo "== $name: $status in $((SECONDS - started))s"
  printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$((SECONDS - started))" "$limit" >>"$WORK/sections.tsv"
  return $rc
}

# ---- the measuring half, in Python (scripts/benchmark.py and scripts/bench_peers.py do the measuring) ----------

# JoeyNMT's interpreter (`python -m joeynmt …`, as bench_peers.py calls it): sentencepiece 0.2 (the image's; there
# is no 0.1.99 wheel for Python 3.12) dropped SetVocabulary, which JoeyNMT calls once with the model's own pieces,
# all of them (bench_peers.py writes every piece into its vocabulary file): a restriction to every piece restricts
# nothing, so it is a no-op here; and, should they fail here, importlib_metadata (JoeyNMT reads its own version
# through it: the standard library's does that) and torch.cuda.amp.GradScaler (torch.amp's, by its old name)
cat >"$WORK/joeynmt-python" <<EOF
#!/bin/sh
[ "\$1" = -m ] && [ "\$2" = joeynmt ] && shift 2
exec "$PY" -c '
import functools, runpy, sys
import sentencepiece, torch
try:
    import importlib_metadata
except Exception:  # the carried one would not import here: the standard library has what JoeyNMT asks of it
    import importlib.metadata
    sys.modules["importlib_metadata"] = importlib.metadata
if not hasattr(sentencepiece.SentencePieceProcessor, "SetVocabulary"):
    sentencepiece.SentencePieceProcessor.SetVocabulary = lambda self, pieces: 0
if not hasattr(torch.cuda.amp, "GradScaler"):  # deprecated since torch 2.4: the same scaler by its new name
    torch.cuda.amp.GradScaler = functools.partial(torch.amp.GradScaler, "cuda")
sys.argv = ["joeynmt", *sys.argv[1:]]
runpy.run_module("joeynmt", run_name="__main__", alter_sys=True)
' "\$@"
EOF
# `make train VENV=…` with this interpreter: the Makefile's environment target, already "built"
mkdir -p "$WORK/venv/bin"
printf '#!/bin/sh\nexec "%s" "$@"\n' "$PY" >"$WORK/venv/bin/python"
printf '#!/bin/sh\nexec "%s" -m torch.distributed.run "$@"\n' "$PY" >"$WORK/venv/bin/torchrun"
printf '#!/bin/sh\nexec "%s" -m translate "$@"\n' "$PY" >"$WORK/venv/bin/translate"  # the console command
chmod +x "$WORK/joeynmt-python" "$WORK/venv/bin/python" "$WORK/venv/bin/torchrun" "$WORK/venv/bin/translate"
touch "$WORK/venv/.installed"
export PY WORK ROOT

# ---- preflight: no GPU, no check --------------------------------------------------------------------------------
failed=0
if [ "$DRY" != 1 ]; then
  if ! nvidia-smi >"$WORK/nvidia-smi.txt" 2>&1 || ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    cat "$WORK/nvidia-smi.txt"
    echo "gpu_check: no usable NVIDIA GPU here (nvidia-smi or torch.cuda.is_available() failed): stopping"
    echo '{"error": "no usable NVIDIA GPU (nvidia-smi or torch.cuda.is_available() failed)"}' >"$OUT/gpu_figures.json"
    exit 3
  fi
  cat "$WORK/nvidia-smi.txt"
  nvidia-smi dmon -s um -d 1 >"$WORK/nvidia-smi-dmon.txt" 2>&1 &
  DMON=$!
fi

# ---- install: the carried wheels and the project, without network -----------------------------------------------
install() {
  local extra=()
  [ "$DRY" = 1 ] && extra=(--python-version 3.12 --only-binary=:all:) # the device's Python; here only the plumbing
  ls .whl/*.whl >/dev/null 2>&1 || { echo "no .whl/*.whl: run scripts/fetch_gpu_wheels.sh first, carry .whl and .gpu"; return 1; }
  [ -d .gpu/data/multi30k ] || { echo "no .gpu/data/multi30k: run scripts/fetch_gpu_wheels.sh first"; return 1; }
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "${extra[@]}" .whl/*.whl
}
export SITE DRY
section install 60 bash -c "$(declare -f install); install" || failed=1
export PYTHONPATH=$ROOT:$SITE${PYTHONPATH:+:$PYTHONPATH} # the project itself by PYTHONPATH: no build, no network
section env 30 bash -c 'GPU_CHECK_SECTION_START=$(date +%s) "$PY" "$ROOT/scripts/gpu_check.py" env' || failed=1

# ---- the sections -----------------------------------------------------------------------------------------------
pytest_args=(-q -m cuda tests/test_cuda.py -p no:cacheprovider "--junitxml=$OUT/pytest_cuda.xml" -o junit_family=xunit1)
"$PY" -c 'import xdist' 2>/dev/null && [ "$DRY" != 1 ] && pytest_args+=(-n 6)
# a test that hangs (an nccl rendezvous, say) fails alone, well inside the section: the XML is written at the end
"$PY" -c 'import pytest_timeout' 2>/dev/null && pytest_args+=(--timeout=100)
section tests 150 "$PY" -m pytest "${pytest_args[@]}" || failed=1
for name in bench peers ttb; do
  cap=$(case $name in bench) echo 100 ;; peers) echo 140 ;; ttb) echo 120 ;; esac)
  section "$name" "$cap" bash -c "GPU_CHECK_SECTION_START=\$(date +%s) \"\$PY\" \"$ROOT/scripts/gpu_check.py\" $name" || failed=1
done

# ---- report -----------------------------------------------------------------------------------------------------
[ -n "${DMON:-}" ] && kill "$DMON" 2>/dev/null
echo "== report"
timeout 60 "$PY" "$ROOT/scripts/gpu_check.py" report || failed=1
tar -czf "$OUT/logs.tar.gz" -C "$WORK" --exclude='*.pt' --exclude='*.ckpt' --exclude=site --exclude=venv \
  --exclude=peers/data . 2>/dev/null
echo "== sections"
column -t -s $'\t' "$WORK/sections.tsv" 2>/dev/null || cat "$WORK/sections.tsv"
echo "gpu_check: done in $((SECONDS - START))s; $OUT: $(cd "$OUT" && ls | tr '\n' ' ')"
[ "$DRY" = 1 ] && [ -z "${GPU_CHECK_KEEP:-}" ] && rm -rf "$WORK"
if grep -qE 'failures="[1-9]|errors="[1-9]' "$OUT/pytest_cuda.xml" 2>/dev/null; then failed=1; fi
echo "gpu_check: exit $failed (0: every section ran and every test passed)"
exec >&- 2>&-
wait "$TEE" 2>/dev/null # the log in $OUT complete before the machine goes back
exit $failed
