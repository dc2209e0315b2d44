#!/usr/bin/env bash
# Runs optg_jax training on every worker of a Cloud TPU pod slice.
#
#   launch/tpu_pod.sh TPU_NAME ZONE WORKDIR [CONFIG] [extra flags...]
#
# The same command starts on all workers (`--worker=all`); each calls
# `jax.distributed.initialize()` with no arguments (`--distributed`), which
# discovers the pod by itself. WORKDIR must be shared storage that every
# worker can read and write (e.g. a gs:// bucket); only process 0 writes
# metrics and the summary, orbax coordinates the checkpoints. The repository
# is expected at ~/optg_jax on every worker, installed with `pip install -e .`.
#
# Not exercised in CI (it needs a TPU pod); the multi-process code path it
# uses is tested on CPU by tests/test_multiprocess.py.
set -euo pipefail
if [[ $# -lt 3 ]]; then
  echo "usage: $0 TPU_NAME ZONE WORKDIR [CONFIG] [extra flags...]" >&2
  exit 2
fi
TPU_NAME=$1; ZONE=$2; WORKDIR=$3; CONFIG=${4:-configs/imagenet.py}
shift $(( $# < 4 ? $# : 4 ))
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all \
  --command="cd ~/optg_jax && python3 launch/train.py --distributed \
    --config=$CONFIG --workdir=$WORKDIR $*"
