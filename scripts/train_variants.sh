#!/usr/bin/env bash
# Collect play-table data from both kinds of start (random scenes and CALVIN's reset states), pack it, and
# train several variants of the tiny model from scratch side by side on one GPU (or CPU), each for the same
# time; then pack each run's final EMA checkpoint as RUN_DIR/<name>.tar.gz. Used for the GPU comparisons in
# bench/RESULTS.md ("The instruction looks at the patches" section).
#
#   bash scripts/train_variants.sh RUN_DIR BUDGET_S NAME="MODEL OVERRIDES" [NAME="..." ...]
#   e.g. bash scripts/train_variants.sh runs/v 540 base="model.lang_query=0" query=""
#
# BUDGET_S: seconds for the whole script; each variant trains for what is left after collecting, packing
# and a short concurrent speed probe, less SAVE_S (default 50). Environment: EPISODES (per start kind,
# default 44), EPISODE_LEN (1024), WORKERS (all cores), DATA (default /dev/shm/variants when it has room,
# else data/variants), PYTHON (python3), BATCH/LR (GPU 512 / 1.5e-3, CPU 32 / 1e-3), EXTRA (train overrides
# for every variant; default: the padded-first-step recipe of the shipped weights), STEPS (skip the speed probe:
# this many steps each).
set -euo pipefail
RUN=${1:?usage: train_variants.sh RUN_DIR BUDGET_S NAME=OVERRIDES ...}
BUDGET_S=${2:?usage: train_variants.sh RUN_DIR BUDGET_S NAME=OVERRIDES ...}
shift 2
[ $# -ge 1 ] || { echo "name at least one variant: NAME=\"MODEL OVERRIDES\"" >&2; exit 2; }
T0=$(date +%s)
PY=${PYTHON:-python3}
WORKERS=${WORKERS:-$(nproc)}
EPISODES=${EPISODES:-44}
EXTRA=${EXTRA:-pad_history=true start_repeat=3 start_frames=15}
if [ -z "${DATA:-}" ]; then
  DATA=data/variants
  if [ -d /dev/shm ] && [ "$(df --output=avail -B1G /dev/shm | tail -1)" -gt $((EPISODES * 8 / 10 + 10)) ]; then
    DATA=/dev/shm/variants
  fi
fi
PRECISION=fp32; BATCH=${BATCH:-32}; LR=${LR:-1.0e-3}
if $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  PRECISION=bf16; BATCH=${BATCH_GPU:-512}; LR=${LR_GPU:-1.5e-3}
fi
mkdir -p "$RUN"
echo "data=$DATA episodes=2x$EPISODES workers=$WORKERS precision=$PRECISION batch=$BATCH lr=$LR"
half=$(( WORKERS > 1 ? WORKERS / 2 : 1 ))
pids=()
for kind in random calvin; do
  if [ ! -d "$DATA/$kind/training" ]; then
    seed=$([ "$kind" = random ] && echo 101 || echo 102)
    MUJOCO_GL=${MUJOCO_GL:-egl} $PY -m dream_policy collect scene=D num_episodes="$EPISODES" \
      episode_len="${EPISODE_LEN:-1024}" workers="$half" window=160 label=attempt seed="$seed" starts="$kind" \
      out="$DATA/$kind" > "$RUN/collect_$kind.log" 2>&1 &
    pids+=($!)
  fi
done
for pid in "${pids[@]}"; do wait "$pid" || { tail -c 2000 "$RUN"/collect_*.log >&2; exit 1; }; done
echo "collect took $(( $(date +%s) - T0 )) s"
for kind in random calvin; do
  if [ ! -d "$DATA/${kind}_packed/training" ]; then
    $PY -m dream_policy pack data="$DATA/$kind" out="$DATA/${kind}_packed" model=tiny forecast_n=3 workers="$WORKERS" \
      > "$RUN/pack_$kind.log" 2>&1 || { tail -c 2000 "$RUN/pack_$kind.log" >&2; exit 1; }
  fi
done
PACKED="[$DATA/random_packed,$DATA/calvin_packed]"
echo "collect + pack took $(( $(date +%s) - T0 )) s"
names=(); overrides=()
for spec in "$@"; do names+=("${spec%%=*}"); overrides+=("${spec#*=}"); done
# speed of every variant while all run at once (they share the GPU), to size each cosine schedule
pids=()
for i in "${!names[@]}"; do
  [ -z "${STEPS:-}" ] || break
  sets=""
  for o in ${overrides[$i]}; do [[ $o == model.* ]] && sets+=" --set ${o#model.}"; done
  $PY scripts/probe_train_speed.py "$DATA/random_packed" --batch "$BATCH" --precision "$PRECISION" --steps 30 \
    --warmup 10 $sets > "$RUN/probe_${names[$i]}.log" 2>&1 &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid" || { tail -c 2000 "$RUN"/probe_*.log >&2; exit 1; }; done
MINUTES=$($PY -c "print(round(($BUDGET_S - $(date +%s) + $T0 - ${SAVE_S:-50}) / 60, 2))")
$PY -c "import sys; sys.exit(0 if $MINUTES >= 0.5 else 1)" || { echo "only $MINUTES min left to train" >&2; exit 1; }
pids=()
for i in "${!names[@]}"; do
  if [ -n "${STEPS:-}" ]; then
    rate=given; steps=$STEPS
  else
    rate=$(tail -1 "$RUN/probe_${names[$i]}.log" | cut -d= -f2)
    steps=$($PY -c "print(max(100, int($rate * $MINUTES * 60 * 0.9)))")
  fi
  warmup=$(( steps < 5000 ? steps / 10 : 500 ))
  echo "${names[$i]}: ${overrides[$i]:-(defaults)}: $rate steps/s alone-together, $steps steps in at most $MINUTES min"
  $PY -m dream_policy train "data=$PACKED" model=tiny ${overrides[$i]} trainer.out_dir="$RUN/${names[$i]}" \
    trainer.precision="$PRECISION" trainer.batch_size="$BATCH" trainer.lr="$LR" trainer.num_workers=0 \
    trainer.total_steps="$steps" trainer.warmup_steps="$warmup" trainer.time_limit_min="$MINUTES" \
    trainer.eval_every=$(( steps > 1 ? steps / 2 : 1 )) trainer.save_every=100000 trainer.log_every=$(( steps < 50 ? 1 : 50 )) $EXTRA \
    > "$RUN/train_${names[$i]}.log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
for name in "${names[@]}"; do
  last=$(ls -d "$RUN/$name"/checkpoints/step_* 2>/dev/null | tail -1)
  if [ -z "$last" ]; then echo "$name: no checkpoint" >&2; tail -c 1500 "$RUN/train_$name.log" >&2; status=1; continue; fi
  files="ema.safetensors config.yaml normalization.json"
  if [ -f "$RUN/$name/metrics.csv" ]; then cp "$RUN/$name/metrics.csv" "$last/"; files+=" metrics.csv"; fi
  tar czf "$RUN/$name.tar.gz" -C "$last" $files
  echo "$name: $(basename "$last") -> $RUN/$name.tar.gz ($(du -h "$RUN/$name.tar.gz" | cut -f1))"
done
echo "whole script took $(( $(date +%s) - T0 )) s"
exit $status
