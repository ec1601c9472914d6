#!/usr/bin/env bash
# The GPU measurements behind BUILD_NOTES.md's GPU tables, in stages, from the repository root:
#
#   OUT=/tmp/gpu DATA=../shared/data/mnist bash benchmarks/gpu_suite.sh check scale tf32 memory table
#   OUT=/tmp/gpu DATA=../shared/data/mnist bash benchmarks/gpu_suite.sh ahead_tf32 ahead_float32
#
# One lent H100 gave (2026-11-23): check about 3 min, scale (4 M values, 1 repeat) about 4 min,
# table about 4 min per run: give each stage its own call or `timeout`.
#
# check   versions, the GPU, and the engine's tests on it (member k == single run, modes agree, ...)
# hlo     the GPU-optimised HLO of one epoch (M = 64), tarred into $OUT, to read offline
# scale   bench_engine, float32 (the default): PyTorch on the same GPU, then M = 1 ... 1024 (vmap)
# tf32    bench_engine, tensorfloat32 at a few M (what TF32 buys)
# memory  the largest member count that trains on this device (one worker per M, doubling)
# table   `python -m jaxact.main --study=all --seeds=10` (both studies, every cell, early stopping)
#         timed from process start to the written report: float32 with and without --compact,
#         tensorfloat32, no checkpoints; each run's log, results and report tarred into $OUT
# ahead_tf32, ahead_float32
#         the same table with --compile_ahead (each next task compiled while a task trains)
#         and without, at one precision (two table runs: about 8 min on an H100); run to the
#         end, the pair also compares TF32 with float32 metrics, member by member
# conv    bench_engine with --conv=native (XLA's convolution; vmapped members become a grouped
#         convolution) against the default im2col, float32, M = 1, 64, 1024, one round each
#
# Every table run compiles cold (--compilation_cache_dir=''): jax's persistent cache would
# otherwise hand later runs the programs of earlier ones.
#
# Needs jax with a GPU backend, flax, optax, chex, orbax-checkpoint, tensorflow-datasets, torch.
# Every stage logs to $OUT/<stage>.log; a failing stage does not stop the later ones.
set -u
OUT=${OUT:?set OUT to a folder for the logs and results}
DATA=${DATA:?set DATA to the MNIST IDX folder}
DATA=$(cd "$DATA" && pwd)
mkdir -p "$OUT"
export JAXACT_DATA_DIR="$DATA" JAXACT_TFDS_DIR=${JAXACT_TFDS_DIR:-/tmp/jaxact-tfds}
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
MEMBERS=${MEMBERS:-1,8,64,256,1024}
SEEDS=${SEEDS:-10}

stage_check() {
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
  $PY -c "import jax, flax, optax, chex, orbax.checkpoint as o, tensorflow_datasets as t, torch
print('jax', jax.__version__, jax.devices(), 'flax', flax.__version__, 'optax', optax.__version__,
      'chex', chex.__version__, 'tfds', t.__version__, 'torch', torch.__version__)"
  timeout 400 $PY -m pytest -q -p no:cacheprovider tests/test_engine.py
}

stage_hlo() {
  # The GPU-optimised HLO of one multiclass epoch at M = 64 (which fusions, which kernels), to
  # read offline: where the 4.3 ms per member-epoch go.
  rm -rf /tmp/hlo
  XLA_FLAGS="--xla_dump_to=/tmp/hlo --xla_dump_hlo_as_text --xla_dump_hlo_module_re=.*epoch.*" \
    $PY -m benchmarks.bench_engine --worker engine --members 64 --epochs 2 --data_dir="$DATA" \
    --member_mode vmap | grep BENCH_JSON
  ls /tmp/hlo | wc -l
  tar -czf "$OUT/hlo_epoch_M64.tgz" -C /tmp hlo
}

stage_scale() {
  $PY -m benchmarks.bench_engine --data_dir="$DATA" --members="$MEMBERS" --member_modes=vmap \
    --epochs=4 --repeats=3 --out="$OUT/results_gpu_scaling_float32.md"
}

stage_tf32() {
  $PY -m benchmarks.bench_engine --data_dir="$DATA" --members=${TF32_MEMBERS:-1,64,1024} \
    --member_modes=vmap --epochs=4 --repeats=3 --skip_torch --matmul_precision=tensorfloat32 \
    --out="$OUT/results_gpu_scaling_tf32.md"
}

stage_memory() {
  # One epoch pair per M in a fresh process, allowed 95% of the GPU's memory; doubles M until a
  # run fails (out of memory) or MEMORY_MAX is reached.
  local m=${MEMORY_START:-2048}
  while [ "$m" -le "${MEMORY_MAX:-65536}" ]; do
    if XLA_PYTHON_CLIENT_MEM_FRACTION=0.95 timeout 300 $PY -m benchmarks.bench_engine \
        --worker engine --members "$m" --epochs 2 --data_dir="$DATA" --member_mode vmap \
        | grep BENCH_JSON; then
      echo "M=$m fits"
    else
      echo "M=$m failed (exit ${PIPESTATUS[0]})"; break
    fi
    m=$((m * 2))
  done
}

table_run() {  # name, extra jaxact.main flags...
  # The user's command, timed from process start to the written report.
  local name=$1; shift
  local t0 t1
  t0=$(date +%s.%N)
  $PY -m jaxact.main --study=all --seeds="$SEEDS" --data_dir="$DATA" --workdir="/tmp/table_$name" \
    --compilation_cache_dir= "$@" > "$OUT/table_$name.log" 2>&1
  local rc=$?
  t1=$(date +%s.%N)
  echo "table $name (flags: $*): exit $rc, wall $(awk "BEGIN {print $t1 - $t0}") s"
  grep -E "done in" "$OUT/table_$name.log" | tail -n 12
  cp "$OUT/table_$name.log" "/tmp/table_$name/"
  tar -czf "$OUT/table_$name.tgz" --exclude=checkpoints -C /tmp "table_$name"
}

stage_table() {
  table_run float32_compact --compact
  table_run tf32_compact --compact --matmul_precision=tensorfloat32
  table_run float32
  table_run float32_compact_nockpt --compact --checkpoint_every=0
}

stage_ahead_tf32() {
  table_run tf32_ahead --compile_ahead --matmul_precision=tensorfloat32
  table_run tf32 --matmul_precision=tensorfloat32
}

stage_ahead_float32() {
  table_run float32_ahead --compile_ahead
  table_run float32
}

stage_conv() {
  local m=${CONV_MEMBERS:-1,64,1024}
  $PY -m benchmarks.bench_engine --data_dir="$DATA" --members="$m" --member_modes=vmap \
    --epochs=3 --repeats=1 --skip_torch --conv=native --out="$OUT/results_gpu_conv_native.md"
  $PY -m benchmarks.bench_engine --data_dir="$DATA" --members="$m" --member_modes=vmap \
    --epochs=3 --repeats=1 --skip_torch --conv=im2col --out="$OUT/results_gpu_conv_im2col.md"
}

for stage in "$@"; do
  echo "=== $stage $(date -u +%T)"
  t0=$(date +%s)
  "stage_$stage" > "$OUT/$stage.log" 2>&1
  echo "=== $stage exit $? in $(( $(date +%s) - t0 )) s"
  tail -n 25 "$OUT/$stage.log"
done
