#!/usr/bin/env bash
# Launch a script on several processes with MindSpore's msrun (data parallel on CPU).
#
# Usage: bash scripts/msrun_launcher.sh "<script and its arguments>" [WORKER_NUM] [MASTER_PORT] [LOG_DIR]
#   bash scripts/msrun_launcher.sh "run_mindformer.py --config configs/smollm2/finetune_135m_lora.yaml \
#        --run_mode finetune --use_parallel True" 2
# Every worker runs the same command; pass --use_parallel True so each joins the process group, reads its
# own shard of the data and averages gradients with the others. Worker logs go to LOG_DIR (default
# output/msrun_log/worker_<rank>.log); the command returns when all workers are done, with the first
# failing worker's exit code.
set -euo pipefail
if [ $# -lt 1 ]; then
  sed -n '2,11p' "$0"
  exit 2
fi
COMMAND=$1
WORKER_NUM=${2:-2}
MASTER_PORT=${3:-8118}
LOG_DIR=${4:-output/msrun_log}
PYTHON=${PYTHON:-python}
# shellcheck disable=SC2086
exec msrun --worker_num="$WORKER_NUM" --local_worker_num="$WORKER_NUM" --master_port="$MASTER_PORT" \
  --log_dir="$LOG_DIR" --join=True $COMMAND
