#!/usr/bin/env bash
# Collect scripted-expert play-table data with every core, pack it at model resolution, then train
# the tiny DreamVLA on it. This is how the shipped checkpoint (checkpoints/tiny_D) is made, on a
# CUDA machine (bf16, the packed data held on the GPU); on a CPU-only machine it runs the same steps
# in fp32 (slowly: see bench/RESULTS.md).
#
#   bash scripts/train_shipped.sh RUN_DIR [EPISODES] [MINUTES]
#
# With BUDGET_S (seconds for the whole script) the training time is what is left of it after
# collecting and packing, less SAVE_S (default 45) for validation and saving, and the cosine schedule
# (trainer.total_steps) is sized to that time by a short speed probe (scripts/probe_train_speed.py).
# Environment: DATA (default /dev/shm/playtable_D when it has room, else data/playtable_D),
# WORKERS (default: all cores), EPISODE_LEN (frames per episode, default 1024), PYTHON (default python3), BATCH, LR, STEPS (skip the probe),
# WINDOW (frames of each successful attempt annotated with its instruction; default 64 as in CALVIN:
# the expert's rotations and lightbulb tasks take ~100 steps, so 160 labels whole attempts),
# LABEL (collect's label mode: calvin, the default, or attempt: only each attempt's own frames),
# COMPILE (trainer.compile mode, e.g. reduce-overhead; default off), MODEL (configs/model/<MODEL>.yaml,
# default tiny), EXTRA (more train overrides, e.g. "pad_history=true start_repeat=3"; "init=DIR" fine-tunes),
# COLLECT_EXTRA (more collect overrides, e.g. "seed=21").
set -euo pipefail
RUN=${1:?usage: train_shipped.sh RUN_DIR [EPISODES] [MINUTES]}
EPISODES=${2:-96}
MINUTES=${3:-4.5}
WORKERS=${WORKERS:-$(nproc)}
PY=${PYTHON:-python3}
T0=$(date +%s)
if [ -z "${DATA:-}" ]; then
  DATA=data/playtable_D
  if [ -d /dev/shm ] && [ "$(df --output=avail -B1G /dev/shm | tail -1)" -gt $((EPISODES * 3 / 5 + 8)) ]; then
    DATA=/dev/shm/playtable_D
  fi
fi
PACKED=${DATA}_packed
MODEL=${MODEL:-tiny}
PRECISION=fp32
BATCH=${BATCH:-32}
LR=${LR:-1.0e-3}
if $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  PRECISION=bf16
  BATCH=${BATCH_GPU:-512}
  LR=${LR_GPU:-1.5e-3}
fi
echo "model=$MODEL data=$DATA episodes=$EPISODES workers=$WORKERS precision=$PRECISION batch=$BATCH lr=$LR"
if [ ! -d "$DATA/training" ]; then
  MUJOCO_GL=${MUJOCO_GL:-egl} $PY -m dream_policy collect scene=D num_episodes="$EPISODES" episode_len="${EPISODE_LEN:-1024}" \
    workers="$WORKERS" window="${WINDOW:-64}" label="${LABEL:-calvin}" out="$DATA" ${COLLECT_EXTRA:-}
fi
echo "collect took $(( $(date +%s) - T0 )) s"
if [ ! -d "$PACKED/training" ]; then
  $PY -m dream_policy pack data="$DATA" out="$PACKED" model="$MODEL" forecast_n=3 workers="$WORKERS"
fi
echo "collect + pack took $(( $(date +%s) - T0 )) s"
if [ -n "${BUDGET_S:-}" ]; then  # what is left, less start-up, validation and saving
  MINUTES=$($PY -c "print(round(min($MINUTES, ($BUDGET_S - $(date +%s) + $T0 - ${SAVE_S:-45}) / 60), 2))")
fi
if [ -z "${STEPS:-}" ]; then
  T1=$(date +%s)
  RATE=$($PY scripts/probe_train_speed.py "$PACKED" --model "$MODEL" --batch "$BATCH" --precision "$PRECISION" \
    ${COMPILE:+--compile "$COMPILE" --warmup 40} | tail -1 | cut -d= -f2)
  MINUTES=$($PY -c "print(round($MINUTES - ($(date +%s) - $T1) / 60, 2))")
  STEPS=$($PY -c "print(max(100, int($RATE * $MINUTES * 60 * 0.92)))")
fi
if ! $PY -c "import sys; sys.exit(0 if $MINUTES >= 0.5 else 1)"; then
  echo "only $MINUTES min left for training: raise BUDGET_S or MINUTES" >&2
  exit 1
fi
echo "training $STEPS steps in at most $MINUTES min"
WARMUP=$(( STEPS < 5000 ? STEPS / 10 : 500 ))
$PY -m dream_policy train data="$PACKED" model="$MODEL" trainer.out_dir="$RUN" trainer.precision="$PRECISION" \
  trainer.batch_size="$BATCH" trainer.lr="$LR" trainer.num_workers=$(( WORKERS > 3 ? 2 : 0 )) \
  trainer.total_steps="$STEPS" trainer.warmup_steps="$WARMUP" trainer.time_limit_min="$MINUTES" \
  trainer.eval_every=2000 trainer.save_every=2000 trainer.log_every=100 trainer.compile="${COMPILE:-null}" ${EXTRA:-}
echo "whole script took $(( $(date +%s) - T0 )) s"
