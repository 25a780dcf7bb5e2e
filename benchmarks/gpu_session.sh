#!/usr/bin/env bash
# One prepared GPU session: run from the repository root on a bare GPU machine that has PyTorch but not
# hydra-core. Within a hard total of 540 s (each step under its own `timeout`) it
#   0. installs the wheels of hydra-core, omegaconf and antlr4 from a folder (--wheels, no index, no deps) and
#      the project (--no-deps; PYTHONPATH as a fallback), and records the machine;
#   a. smoke: the MNIST recipe eagerly on CUDA with train.deterministic=true: fit, --resume, evaluate;
#   b. captured against eager with the same optimizer form (benchmarks/gpu_checks.py): weights, optimizer
#      state, RNG state and step counts compared for one model with noise off and on, ct_gan_te, two stacked
#      seeds, bf16, a small CNN with dropout and a resumed captured run;
#   c. the benchmark rows (benchmarks/bench_step.py): MNIST 1, 10, 40 stacked models and CIFAR-10 improved_gan
#      and ct_gan with 1 model, eager fp32 / captured fp32 / captured TF32 / captured bf16 (+ channels_last);
#   d. with the time left: the MNIST table, sized from the measured speed (benchmarks/size_table.py): the rows
#      (label counts, 10 seeds each, all trained together) that finish in the time left, 100 labels first, the
#      whole table (20 / 50 / 100 / 200) where it fits; where not even the 100-label row fits, that row. Its
#      speed is bench.json's (step c, or step p, a short probe of 10 and 40 stacked models, when c is
#      skipped), in the fastest mode this call verified: captured in TF32, compiled with inductor inside the
#      capture where step b ran and found its compiled cases equal; eager TF32 where b found a case unequal.
#      Checkpointed every 25 epochs and on SIGTERM at the limit (exact position); the next call on the same
#      machine (runs/ is kept; `--skip a,b,c`) continues it: the first call's plan (rows and mode, in
#      runs/table_plan; the mode is part of the table's cache key), not sized anew. Its progress, and what
#      was predicted ("sizing"), go into table_progress.json; once finished, the table's .md / .json and table_runs.tar.gz
#      (every seed's metrics.jsonl, result.json, config.yaml) come back too.
# Everything it returns is under $OUT (default ./out), at most 8 files:
#   session.log (every step's output), summary.json (each step's status, exit code and seconds),
#   compare.json (b), bench.json (c, p), table_progress.json (d), and a finished table's files (d).
#
#   bash benchmarks/gpu_session.sh [--wheels DIR (default .whl)] [--data DIR (default data, holding mnist.npz)]
#                                  [--work DIR (default runs)] [--total 540] [--skip a,b,c,d] [--dry-run]
#                                  [--checks CASE,... (step b's cases; default all of gpu_checks.py's)]
#                                  [--bench MODE,... (step c: the MNIST rows of these modes only)]
# e.g. issue 32's GPU targets (1 and 40 MNIST models, compiled inside the capture, against captured TF32):
#   bash benchmarks/gpu_session.sh --skip a,d --checks noise_off,compiled,compiled_stacked_2_seeds \
#     --bench graph_tf32,graph_tf32_compiled,graph_tf32_lean_compiled --total 590
# e.g. the MNIST table in one call, compiled inside the capture once checked (about 60 s):
#   bash benchmarks/gpu_session.sh --skip a,c --checks noise_off,compiled,compiled_stacked_2_seeds --total 590
# --dry-run: the same steps and flags on the CPU at tiny sizes (digits data, no install, no capture: the
# captured runs use train.cuda_graph=auto) and without any wall-clock budget (--total and the steps' limits
# apply to the GPU session only); the test suite runs it (tests/test_gpu_session.py).
set -u

WHEELS=${WHEELS:-.whl}
DATA=${DATA:-data}
OUT=${OUT:-./out}
WORK=${WORK:-runs}  # the runs (kept between calls on the same machine: step d continues from them)
TOTAL=540
SKIP=""
CHECK_CASES=""
BENCH_MODES=""
DRY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --wheels) WHEELS=$2; shift 2 ;;
    --data) DATA=$2; shift 2 ;;
    --work) WORK=$2; shift 2 ;;
    --total) TOTAL=$2; shift 2 ;;
    --skip) SKIP=$2; shift 2 ;;
    --checks) CHECK_CASES=$2; shift 2 ;;
    --bench) BENCH_MODES=$2; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    *) echo "gpu_session.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

PY=${PYTHON:-python}
ROOT=$(pwd)
DATA=$(cd "$DATA" 2>/dev/null && pwd || echo "$DATA")  # absolute: the table's runs keep the path
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
# inductor's compiled kernels kept with the runs: a later call on the same machine starts its compile warm
case "$WORK" in /*) WORK_ABS=$WORK ;; *) WORK_ABS=$(pwd)/$WORK ;; esac
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-$WORK_ABS/inductor_cache}
mkdir -p "$OUT"
LOG="$OUT/session.log"
STEPS="$OUT/.steps"  # one line per step, folded into summary.json at the end
: > "$LOG"
: > "$STEPS"
START=$SECONDS

left() { echo $(( TOTAL - (SECONDS - START) )); }

# step NAME BUDGET_S COMMAND...: on the GPU, run under timeout (the smaller of its budget and the time left less a margin
# for the summary; a dry run has no limit), output appended to the log, status recorded.
step() {
  local name=$1 budget=$2; shift 2
  case ",$SKIP," in *",$name,"*) echo "{\"step\": \"$name\", \"status\": \"skipped\"}" >> "$STEPS"; return 0 ;; esac
  local what="$*"
  local t0=$SECONDS rc limit=null
  if [ $DRY -eq 1 ]; then
    # the dry run checks the steps' paths, not the machine's speed: no budget, so a slow or busy CPU cannot fail it
    echo "=== step $name (dry run: no time limit, $(date -u +%H:%M:%S)) ${what:0:300}" >> "$LOG"
    "$@" >> "$LOG" 2>&1
    rc=$?
  else
    limit=$(( $(left) - 10 ))
    [ "$budget" -lt "$limit" ] && limit=$budget
    if [ "$limit" -lt 5 ]; then
      echo "{\"step\": \"$name\", \"status\": \"no time left\"}" >> "$STEPS"; return 0
    fi
    echo "=== step $name (limit ${limit}s, $(date -u +%H:%M:%S)) ${what:0:300}" >> "$LOG"
    timeout -s TERM -k 20 "$limit" "$@" >> "$LOG" 2>&1
    rc=$?
  fi
  local status=ok
  [ $rc -ne 0 ] && status=failed
  [ $rc -eq 124 ] && status=timed_out
  echo "{\"step\": \"$name\", \"status\": \"$status\", \"rc\": $rc, \"seconds\": $(( SECONDS - t0 )), \"limit\": $limit}" >> "$STEPS"
  echo "=== step $name: $status (rc $rc, $(( SECONDS - t0 ))s)" >> "$LOG"
  return 0
}

if [ $DRY -eq 1 ]; then
  DEVICE=cpu
  CAPTURE=auto
  MNIST=(dataset=digits dataset.labels=20 train.epochs=1 train.iters_per_epoch=2 train.batch_size=20
         train.init_batch=50 "model.d_widths=[32,16]" "model.g_widths=[32]" model.z_dim=8)
  CHECKS=(--iters 2 --cases noise_off,resumed --dry-run --work "$WORK/gpu_checks")
  BENCH=(--recipe digits --models 1 --modes eager_fp32 --warmup 4 --iters 3 --repeats 1 --profile-iters 1
         train.batch_size=20 train.init_batch=50 "model.d_widths=[32,16]" "model.g_widths=[32]" model.z_dim=8)
  TABLE=(--dataset digits --seeds 2 train.epochs=2 train.iters_per_epoch=2 train.batch_size=20
         train.init_batch=50 "model.d_widths=[32,16]" "model.g_widths=[32]" model.z_dim=8)
  SIZE=(--recipe digits --epochs 2 --iterations-per-epoch 2 --seeds 2 --labels 20 --startup 0)
  MODES=eager_fp32
  BUDGET_A=0; BUDGET_B=0; BUDGET_C=0  # unused: a dry run's steps have no time limit (see step)
else
  DEVICE=cuda
  CAPTURE=on
  MNIST=(dataset=mnist dataset.source=npz "dataset.path=$DATA/mnist.npz" train.epochs=1 train.iters_per_epoch=200)
  CHECKS=(--iters 30 --work "$WORK/gpu_checks" ${CHECK_CASES:+--cases "$CHECK_CASES"})
  BENCH=()  # step c's commands are in bench_all below
  TABLE=(--dataset mnist --seeds 10 dataset.source=npz "dataset.path=$DATA/mnist.npz")
  SIZE=(--recipe mnist --epochs 300 --iterations-per-epoch 600 --seeds 10 --labels 100,50,20,200)
  MODES=graph_tf32  # graph_tf32_compiled first where step b verified it in this call (below)
  BUDGET_A=75; BUDGET_B=120; BUDGET_C=170
fi

# 0. set-up: the wheels (no index, no dependencies), the project, the machine
setup() {
  if ! "$PY" -c "import hydra, omegaconf" 2>/dev/null; then
    "$PY" -m pip install --no-index --no-deps "$WHEELS"/*.whl || return 1
  fi
  "$PY" -m pip install --no-deps --no-build-isolation -e . >/dev/null 2>&1 || echo "(project on PYTHONPATH)"
  command -v nvidia-smi >/dev/null && nvidia-smi
  "$PY" -c "import torch, hydra, ssgan; print('torch', torch.__version__, 'cuda', torch.version.cuda,
'device', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')"
}
# a. eager smoke run of the MNIST recipe: fit, resume, evaluate (deterministic: checks CUBLAS_WORKSPACE_CONFIG)
smoke() {
  rm -rf $WORK/gpu_smoke
  "$PY" -m ssgan fit --run-dir $WORK/gpu_smoke train.device=$DEVICE train.deterministic=true train.progress=false \
    train.cuda_graph=off "${MNIST[@]}" || return 1
  "$PY" -m ssgan fit --resume $WORK/gpu_smoke train.epochs=2 train.device=$DEVICE || return 1
  "$PY" -m ssgan evaluate $WORK/gpu_smoke --device $DEVICE || return 1
}

# d. the MNIST 100-label table, 10 seeds trained together and captured; continued by the next call
table_progress() {
  "$PY" - "$OUT/table_progress.json" "$1" <<'EOF'
import json, os, sys
from pathlib import Path
seeds = {}
for log in sorted(Path(os.environ["WORK"], "gpu_table", "cache").rglob("metrics.jsonl")):
    lines = [json.loads(l) for l in log.read_text().splitlines() if l.strip()]
    last = lines[-1] if lines else {}
    seeds[log.parent.name] = {"epochs_done": len(lines), "test_error": last.get("test_error"),
                              "finished": (log.parent / "result.json").is_file()}
table = Path(os.environ["WORK"], "gpu_table", "results")
done = sorted(str(p) for p in table.glob("*.md"))
sizing, plan = Path(os.environ["WORK"], "sizing.json"), Path(os.environ["WORK"], "table_plan")
json.dump({"step_rc": int(sys.argv[2]), "seeds": seeds, "table_files": done,
           "plan": plan.read_text().split() if plan.is_file() else None,
           "sizing": json.loads(sizing.read_text()) if sizing.is_file() else None,
           "all_finished": bool(seeds) and all(s["finished"] for s in seeds.values())},
          open(sys.argv[1], "w"), indent=1)
print("table progress:", {k: v["epochs_done"] for k, v in seeds.items()})
EOF
}
table() {
  "$PY" -m ssgan table "${TABLE[@]}" --labels "$LABELS" --device $DEVICE --out-dir $WORK/gpu_table/results \
    --cache-dir $WORK/gpu_table/cache train.concurrent_seeds=true $MODE_SET train.checkpoint_every=25 \
    train.progress=false
}
# the overrides of a bench_step.py mode (its MODES) as the table takes them
mode_set() {
  case "$1" in
    graph_tf32) echo "train.cuda_graph=on train.tf32=true" ;;
    graph_tf32_compiled) echo "train.cuda_graph=on train.tf32=true train.compile=inductor" ;;
    eager_tf32) echo "train.cuda_graph=off train.tf32=true" ;;
    *) echo "train.cuda_graph=$CAPTURE train.tf32=false" ;;  # the dry run's eager_fp32
  esac
}

# bash arrays cannot pass through `timeout`: a function step runs as `bash -c` with the arrays re-declared
ARRAYS="$(declare -p MNIST TABLE SIZE BENCH)"
export PY DEVICE CAPTURE OUT WHEELS WORK BENCH_MODES

run_fn() {  # run_fn NAME BUDGET FUNCTION: a function of this script under `timeout`
  local name=$1 budget=$2 fn=$3
  step "$name" "$budget" bash -c "$ARRAYS; $(declare -f "$fn" table_progress); $fn"
}

if [ $DRY -eq 1 ]; then
  step setup 10 echo "dry run: no install"
else
  run_fn setup 90 setup
fi
run_fn a "$BUDGET_A" smoke
step b "$BUDGET_B" "$PY" benchmarks/gpu_checks.py --device $DEVICE --out "$OUT/compare.json" "${CHECKS[@]}"
if [ $DRY -eq 1 ]; then
  step c "$BUDGET_C" "$PY" benchmarks/bench_step.py --device $DEVICE --out "$OUT/bench.json" "${BENCH[@]}"
else
  # rows small but trustworthy: 10 untimed iterations (the capture among them), 100 timed, 3 runs per row
  bench_all() {
    if [ -n "$BENCH_MODES" ]; then  # --bench: these modes' MNIST rows only, 1 and 40 models
      "$PY" benchmarks/bench_step.py --device cuda --out "$OUT/bench.json" --recipe mnist --models 1,40 \
        --modes "$BENCH_MODES" --warmup 10 --iters 100 --repeats 3
      return
    fi
    "$PY" benchmarks/bench_step.py --device cuda --out "$OUT/bench.json" --recipe mnist --models 1,10,40 \
      --modes eager_fp32,graph_fp32,graph_tf32,graph_bf16 --warmup 10 --iters 100 --repeats 3 || return 1
    for recipe in cifar10 cifar10_ct_gan; do
      "$PY" benchmarks/bench_step.py --device cuda --out "$OUT/bench.json" --recipe $recipe --models 1 \
        --modes eager_fp32,graph_fp32,graph_tf32,graph_bf16 --warmup 10 --iters 50 --repeats 3 || return 1
    done
  }
  case ",$SKIP," in *",d,"*) BUDGET_C=$(left) ;; esac  # no table after it: step c may take the time left
  run_fn c "$BUDGET_C" bench_all
fi
# d: captured with TF32, the fastest mode verified for the MLPs (results/gpu_capture_check.json), compiled
# inside the capture where b ran in this call and found its compiled cases equal; where b found a case
# unequal, stacked eager with TF32 instead (its speed unmeasured: the 100-label row, continued by later calls).
# A case that b did not reach (its time ran out) counts as not verified, not as unequal.
verdict() {  # verdict [CASE...]: whether this call's compare.json has these cases ok (none named: every case run)
  [ -f "$OUT/compare.json" ] && "$PY" -c "
import json, sys
compare = json.load(open(sys.argv[1]))
cases = sys.argv[2:] or list(compare['cases'])
sys.exit(0 if all(compare['cases'].get(c, {}).get('ok') for c in cases) else 1)
" "$OUT/compare.json" "$@" 2>/dev/null
}
# p: the speed of the first mode where step c did not measure it (10 and 40 stacked models, one timed run each)
probe() {
  "$PY" -c "
import json, sys
rows = json.load(open(sys.argv[1]))['rows']
sys.exit(0 if any(r['mode'] == sys.argv[2] and r['recipe'] == sys.argv[3] and r['ms_per_iteration'] for r in rows) else 1)
" "$OUT/bench.json" "$FIRST_MODE" "${SIZE[1]}" 2>/dev/null && { echo "speed already measured"; return 0; }
  if [ "$DEVICE" = cpu ]; then
    "$PY" benchmarks/bench_step.py --device cpu --out "$OUT/bench.json" "${BENCH[@]}"
  else
    "$PY" benchmarks/bench_step.py --device cuda --out "$OUT/bench.json" --recipe mnist --models 10,40 \
      --modes "$FIRST_MODE" --warmup 10 --iters 50 --repeats 1 --profile-iters 0  # the time only: one compile
  fi
}
# A later call continues the plan of the first (its rows and mode: the mode is part of the table's cache key,
# so another mode would start the rows again); rows continued from mid-training are not sized anew.
mkdir -p "$WORK"
PLAN_FILE="$WORK/table_plan"
rm -f "$WORK/sizing.json"  # an earlier call's prediction is not this call's
if [ -s "$PLAN_FILE" ]; then
  read -r LABELS MODE < "$PLAN_FILE"
  echo "=== step d continues the plan of an earlier call: $(cat "$PLAN_FILE")" >> "$LOG"
else
  if [ $DRY -eq 0 ] && [ -f "$OUT/compare.json" ] && ! verdict; then
    MODES=eager_tf32
  elif [ $DRY -eq 0 ] && verdict compiled compiled_stacked_2_seeds; then
    MODES=graph_tf32_compiled,graph_tf32
  fi
  FIRST_MODE=${MODES%%,*}
  export FIRST_MODE
  if [ "$MODES" != eager_tf32 ]; then
    run_fn p 150 probe
  fi
  # the rows that finish in what is left, less the table's margin (below)
  TABLE_SECONDS=$(( $(left) - 40 )); [ $DRY -eq 1 ] && TABLE_SECONDS=1000000
  PLAN=$("$PY" benchmarks/size_table.py --bench "$OUT/bench.json" --mode "$MODES" --seconds "$TABLE_SECONDS" \
         --explain "$WORK/sizing.json" "${SIZE[@]}" 2>> "$LOG")
  if [ -n "$PLAN" ]; then
    LABELS=${PLAN%% *}; MODE=${PLAN##* }
  else  # no speed (eager after an unequal check, or a failed probe): the first row in the last, plainest mode
    LABELS=$(echo "${SIZE[@]}" | sed -n 's/.*--labels \([0-9]*\).*/\1/p'); MODE=${MODES##*,}
  fi
  echo "$LABELS $MODE" > "$PLAN_FILE"
fi
MODE_SET=$(mode_set "$MODE")
export LABELS MODE_SET
echo "=== step d: labels $LABELS, mode $MODE ($MODE_SET)" >> "$LOG"
# a margin for SIGTERM's checkpoint of every seed (timeout -k 20 kills after it), the progress and the summary
run_fn d $(( $(left) - 40 )) table
TABLE_RC=$(tail -n 1 "$STEPS" | sed -n 's/.*"rc": \([0-9]*\).*/\1/p')
table_progress "${TABLE_RC:--1}" >> "$LOG" 2>&1
# a finished table comes back whole: its .md / .json and every seed's metrics.jsonl and result.json (one archive)
if ls "$WORK"/gpu_table/results/*.json >/dev/null 2>&1; then
  cp "$WORK"/gpu_table/results/*.json "$WORK"/gpu_table/results/*.md "$OUT"/ 2>/dev/null
  (cd "$WORK/gpu_table/cache" && find . \( -name metrics.jsonl -o -name result.json -o -name config.yaml \) -print0 |
     tar --null -czf "$OUT/table_runs.tar.gz" -T -) >> "$LOG" 2>&1
fi

"$PY" - "$STEPS" "$OUT/summary.json" $(( SECONDS - START )) $DRY <<'EOF'
import json, os, sys
steps = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
json.dump({"steps": steps, "seconds": int(sys.argv[3]), "dry_run": sys.argv[4] == "1",
           "ok": all(s["status"] in ("ok", "skipped") or s["step"] == "d" for s in steps)},
          open(sys.argv[2], "w"), indent=1)
EOF
rm -f "$STEPS"
cat "$OUT/summary.json"
