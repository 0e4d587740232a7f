#!/usr/bin/env bash
# Collect scripted-expert play-table data with every core, then train the tiny DreamVLA on it.
# This is how the shipped checkpoint (checkpoints/tiny_D) was made, on a CUDA machine (bf16); on a
# CPU-only machine it runs the same steps in fp32 (slowly: see bench/RESULTS.md).
#
#   bash scripts/train_shipped.sh RUN_DIR [EPISODES] [MINUTES] [STEPS]
#
# Environment: DATA (default /dev/shm/playtable_D when it has room, else data/playtable_D),
# WORKERS (default: all cores; collector processes, and loader workers), PYTHON (default python3),
# BUDGET_S (optional: seconds for the whole script; training then stops in time to save).
set -euo pipefail
RUN=${1:?usage: train_shipped.sh RUN_DIR [EPISODES] [MINUTES] [STEPS]}
EPISODES=${2:-96}
MINUTES=${3:-4.5}
STEPS=${4:-6000}
WORKERS=${WORKERS:-$(nproc)}
PY=${PYTHON:-python3}
T0=$(date +%s)
if [ -z "${DATA:-}" ]; then
  DATA=data/playtable_D
  if [ -d /dev/shm ] && [ "$(df --output=avail -B1G /dev/shm | tail -1)" -gt $((EPISODES * 2 / 5 + 4)) ]; then
    DATA=/dev/shm/playtable_D
  fi
fi
PRECISION=fp32
BATCH=32
if $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  PRECISION=bf16
  BATCH=128
fi
echo "data=$DATA episodes=$EPISODES workers=$WORKERS precision=$PRECISION batch=$BATCH steps=$STEPS"
MUJOCO_GL=${MUJOCO_GL:-egl} $PY -m dream_policy collect scene=D num_episodes="$EPISODES" episode_len=1024 \
  workers="$WORKERS" out="$DATA"
echo "collect took $(( $(date +%s) - T0 )) s"
if [ -n "${BUDGET_S:-}" ]; then  # what is left, less a minute for start-up, validation and saving
  MINUTES=$($PY -c "print(round(min($MINUTES, ($BUDGET_S - $(date +%s) + $T0 - 60) / 60), 2))")
fi
echo "training for at most $MINUTES min"
train() {
  $PY -m dream_policy train data="$DATA" model=tiny trainer.out_dir="$RUN" trainer.precision="$1" \
    trainer.batch_size=$BATCH trainer.num_workers=$(( WORKERS > 3 ? WORKERS - 2 : 1 )) \
    trainer.total_steps="$STEPS" trainer.warmup_steps=$(( STEPS < 3000 ? STEPS / 10 : 300 )) \
    trainer.time_limit_min="$MINUTES" trainer.eval_every=1000 trainer.save_every=1000 trainer.log_every=50
}
T1=$(date +%s)
if ! train $PRECISION; then
  if [ $PRECISION != bf16 ] || [ -e "$RUN/checkpoints/latest" ]; then exit 1; fi
  echo "bf16 training failed before its first checkpoint: retrying in fp32" >&2
  rm -rf "$RUN"
  train fp32
fi
echo "train took $(( $(date +%s) - T1 )) s"
