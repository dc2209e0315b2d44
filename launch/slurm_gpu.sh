#!/usr/bin/env bash
# Multi-GPU, multi-node optg_jax training under SLURM: one process per GPU.
#
#   sbatch --nodes=2 --ntasks-per-node=8 --gpus-per-task=1 \
#       launch/slurm_gpu.sh WORKDIR [CONFIG] [extra flags...]
#
# Every task runs the same command; process 0's host is the coordinator.
# WORKDIR must be on a file system shared by all nodes. The global batch
# (`--config.batch_size`) is split over all GPUs of all nodes and must be
# divisible by their number.
#
# Not exercised in CI (it needs a GPU cluster); the multi-process code path it
# uses is tested on CPU by tests/test_multiprocess.py.
#SBATCH --job-name=optg
set -euo pipefail
if [[ $# -lt 1 ]]; then
  echo "usage: sbatch ... $0 WORKDIR [CONFIG] [extra flags...]" >&2
  exit 2
fi
WORKDIR=$1; CONFIG=${2:-configs/imagenet.py}
shift $(( $# < 2 ? $# : 2 ))
COORDINATOR_HOST=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
PORT=${OPTG_COORDINATOR_PORT:-12345}
srun bash -c "python3 launch/train.py \
  --coordinator_address=${COORDINATOR_HOST}:${PORT} \
  --num_processes=\${SLURM_NTASKS} --process_id=\${SLURM_PROCID} \
  --config=$CONFIG --workdir=$WORKDIR $*"
