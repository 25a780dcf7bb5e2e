#!/usr/bin/env bash
# A second GPU call (after benchmarks/gpu_session.sh): why the CNN cases of the capture check differed, and
# CIFAR-10's CT-GAN learning curve for the time left (issue: the trajectory beside CT-GAN's official log).
#   1. the CNN cases (ct_gan_te, cnn_dropout) with train.deterministic=true: captured against eager, and
#      eager against eager without it (the noise floor of non-deterministic cuDNN kernels) -> cnn_compare*.json
#   2. data/cifar10.npz (the JPEG-75 copy) decoded by materialize.py into data/c/cifar10-jpeg.npz, then
#      ssgan fit --dataset cifar10 --labels 4000 --method ct_gan on it until the time limit (SIGTERM:
#      checkpointed), its metrics.jsonl copied out -> cifar10_ct_gan_metrics.jsonl
#   OUT=... [SKIP_CHECKS=1] [METHOD=ct_gan_te] bash benchmarks/gpu_cnn_curve.sh [FIT_SECONDS (default 240)]
#       [CAPTURE (default: on if step 1 agreed or was skipped)]
# The Polyak average starts as the recipe says (train.ema_start=zero since 2026-11-26; the first run had init).
set -u
OUT=${OUT:-./out}; mkdir -p "$OUT"
FIT_S=${1:-240}
PY=${PYTHON:-python}
export PYTHONUNBUFFERED=1 PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}"
LOG="$OUT/cnn_curve.log"
"$PY" -c "import hydra" 2>/dev/null || "$PY" -m pip install -q --no-index --no-deps .whl/*.whl >> "$LOG" 2>&1
DET_RC=0
if [ "${SKIP_CHECKS:-0}" != 1 ]; then  # SKIP_CHECKS=1: step 1 is done (results/gpu_capture_check.json)
  timeout 60 "$PY" benchmarks/gpu_checks.py --device cuda --out "$OUT/cnn_compare_deterministic.json" \
    --cases ct_gan_te,cnn_dropout --set train.deterministic=true >> "$LOG" 2>&1
  DET_RC=$?
  timeout 40 "$PY" benchmarks/gpu_checks.py --device cuda --out "$OUT/cnn_compare_control.json" \
    --cases cnn_dropout --control --work runs/gpu_checks_control >> "$LOG" 2>&1
fi
CAPTURE=${2:-$([ $DET_RC -eq 0 ] && echo on || echo off)}
echo "=== curve: train.cuda_graph=$CAPTURE (deterministic check rc $DET_RC) $(date -u +%H:%M:%S)" >> "$LOG"
mkdir -p data/c && timeout 90 "$PY" data/materialize.py data/c --only cifar10 >> "$LOG" 2>&1
RUN=runs/cifar10_${METHOD:-ct_gan}; rm -rf $RUN
T0=$SECONDS
timeout -s TERM -k 30 "$FIT_S" "$PY" -m ssgan fit --dataset cifar10 --labels 4000 --method ${METHOD:-ct_gan} \
  --run-dir $RUN dataset.source=npz dataset.path=data/c/cifar10-jpeg.npz train.device=cuda \
  train.cuda_graph=$CAPTURE train.tf32=true train.progress=false train.checkpoint_every=1000 >> "$LOG" 2>&1
echo "=== fit rc $? after $(( SECONDS - T0 )) s" >> "$LOG"
cp $RUN/metrics.jsonl "$OUT/cifar10_${METHOD:-ct_gan}_metrics.jsonl"
cp $RUN/config.yaml "$OUT/cifar10_${METHOD:-ct_gan}_config.yaml" 2>/dev/null
tail -n 3 "$OUT/cifar10_${METHOD:-ct_gan}_metrics.jsonl"
