#!/usr/bin/env bash
# What the GPU device machine lacks, fetched here for scripts/gpu_check.sh (docs/gpu.md): it has no network, and its
# Python 3.12 image holds torch (CUDA), sentencepiece, sacrebleu, tensorboard, numpy, pyarrow, pandas, pytest and
# the rest of its list (/work/.library/device/KINDS.md), but not hydra-core, omegaconf, antlr4 4.9.3, datasets (and
# its dill, multiprocess) or JoeyNMT 2.3 (and its subword-nmt, mock, importlib_metadata, lazy-importer).
#
#   bash scripts/fetch_gpu_wheels.sh        -> .whl/  the wheels (cp312 / pure Python, manylinux x86_64)
#                                              .gpu/  Multi30k de-en (data/multi30k), its tokenizer and token store
#                                                     prepared once here (cache/), and which commit this was (source.txt)
#
# Both folders are ignored through .git/info/exclude, and travel only where a device run names them in `carry`.
# Run it again after changing the code only if the data settings changed; it starts both folders afresh.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-$ROOT/.venv/bin/python}
[ -x "$PY" ] || PY=python3
MULTI30K=${MULTI30K:-$ROOT/../shared/data/multi30k}

# the versions this checkout is tested with here (.venv); one version of each, or the device's install stops
PROJECT_WHEELS=(hydra-core==1.3.8 omegaconf==2.3.1 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19)
ANTLR=antlr4-python3-runtime==4.9.3 # hydra/omegaconf pin 4.9.*, published as a source archive only: built here
# JoeyNMT 2.3 beside what the image has; its other requirements (pylint, yapf, plotly, sacremoses, …) are not
# imported by `python -m joeynmt train|test` with plain-text data and SentencePiece
PEER_WHEELS=(joeynmt==2.3.0 subword-nmt==0.3.8 mock==5.2.0 importlib-metadata==10.2.0 lazy-importer==0.1.0)

exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
for path in /.whl/ /.gpu/; do
  grep -qxF "$path" "$exclude" 2>/dev/null || echo "$path" >>"$exclude"
done

rm -rf .whl .gpu
mkdir -p .whl .gpu/data/multi30k .gpu/cache
platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$tag")
done
echo "== wheels for CPython 3.12 on x86-64 Linux -> .whl/"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" \
  -d .whl "${PROJECT_WHEELS[@]}" "${PEER_WHEELS[@]}"
build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
"$PY" -m pip download -q --no-deps --no-binary=:all: -d "$build" "$ANTLR"
"$PY" -m pip wheel -q --no-deps -w .whl "$build"/antlr4*
ls -1 .whl

echo "== Multi30k (de, en) from $MULTI30K -> .gpu/data/multi30k/"
for split in train val test_2016_flickr; do
  for lang in de en; do
    cp "$MULTI30K/$split.$lang.gz" .gpu/data/multi30k/
  done
done
[ -f "$MULTI30K/README.md" ] && cp "$MULTI30K/README.md" .gpu/data/multi30k/

echo "== its tokenizer and token store (make prepare) -> .gpu/cache/"
TRANSLATE_DATA_DIR=$ROOT/.gpu/data/multi30k "$PY" -m translate prepare \
  "data.tokenizer.cache_dir=$ROOT/.gpu/cache/tokenizers" >"$build/prepare.log" 2>&1 ||
  { cat "$build/prepare.log"; exit 1; }
tail -n 3 "$build/prepare.log"

{
  echo "commit $(git rev-parse HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (with uncommitted changes)')"
  echo "fetched $(date -u +%Y-%m-%dT%H:%M:%SZ)"
} >.gpu/source.txt

echo "== size (the device takes 64 MiB in all, the working tree included)"
du -sh .whl .gpu
du -sch .whl .gpu | tail -n 1
