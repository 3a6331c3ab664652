#!/usr/bin/env bash
# Run ssljax on a Cloud TPU VM or pod slice: every worker runs the same command, each
# reads its own shard of the data, and jax.distributed joins them into one mesh.
#
# usage: launch/tpu_pod.sh [--dry-run] [--spot | --queued] COMMAND [ARGS...]
#
#   create                      make the TPU (on demand; --spot/--queued: a queued resource)
#   setup                       copy this checkout to every worker, install ssljax[tpu] there
#                               in its own venv (uv-managed Python 3.12, not the image's)
#   train CONFIG[:PRESET] [--config.x=y ...]
#                               pre-train, detached on all workers; logs in ~/ssljax/logs/
#   eval PROTOCOL [FLAGS...]    python -m ssljax.eval PROTOCOL on all workers (knn, linear...)
#   logs [train|eval-PROTOCOL]  the last lines of every worker's log (FOLLOW=1: keep following)
#   status                      the TPU (and queued resource) state, the workers' processes
#   ssh [COMMAND...]            a shell on worker ${WORKER:-0} (WORKER=all: COMMAND on all)
#   resume CONFIG[:PRESET] [--config.x=y ...]
#                               after a preemption: re-provision the queued resource, setup,
#                               train again (it continues from the newest checkpoint in WORKDIR)
#   delete                      delete the TPU (and its queued resource)
#
# Settings (environment): TPU_NAME (ssljax), ZONE (us-central2-b), ACCELERATOR (v4-32;
# e.g. v5litepod-64, v5p-128, v6e-64), RUNTIME (default: from ACCELERATOR, see below),
# PROJECT (gcloud's default project when unset), SPOT=1 / QUEUED=1 (as --spot/--queued),
# DRY_RUN=1 (as --dry-run: print every gcloud command instead of running it),
# WORKDIR and TFDS_DATA_DIR (gs:// paths every worker can read; needed by train, eval and
# resume; datasets must be prepared there first with `tfds build`, see README.md).
# Flags after CONFIG or PROTOCOL reach main.py / ssljax.eval on every worker unchanged.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TPU_NAME=${TPU_NAME:-ssljax}
ZONE=${ZONE:-us-central2-b}
ACCELERATOR=${ACCELERATOR:-v4-32}
QUEUED_RESOURCE=${QUEUED_RESOURCE:-$TPU_NAME-qr}
PYTHON_VERSION=${PYTHON_VERSION:-3.12}
DRY_RUN=${DRY_RUN:-0}
SPOT=${SPOT:-0}
QUEUED=${QUEUED:-0}

# Paths on the workers (relative to the login user's home directory).
REMOTE_DIR=ssljax
REMOTE_VENV=.venvs/ssljax

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'
}

die() {
  echo "error: $*" >&2
  exit 2
}

# The TPU software version ("runtime") each TPU generation needs for JAX, from
# https://cloud.google.com/tpu/docs/runtimes ("TPU software versions", PyTorch and JAX).
runtime_for() {
  case "$1" in
    v6e-*) echo v2-alpha-tpuv6e ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v5litepod-* | v5e-*) echo v2-alpha-tpuv5-lite ;;
    v2-* | v3-* | v4-*) echo tpu-ubuntu2204-base ;;
    *) return 1 ;;
  esac
}

# One word of a command as the shell reads it back: bare when safe, else single-quoted
# (a --flag=VALUE word keeps --flag= outside the quotes, for the reader).
quote() {
  if [[ $1 =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
    printf '%s' "$1"
  elif [[ $1 =~ ^(--[A-Za-z0-9_.-]+=)(.*)$ ]]; then
    printf '%s' "${BASH_REMATCH[1]}"
    quote "${BASH_REMATCH[2]}"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

quote_all() {
  local out="" word
  for word in "$@"; do out+="${out:+ }$(quote "$word")"; done
  printf '%s' "$out"
}

# Run a command, or with DRY_RUN print it (a line a shell can run) and do nothing.
run() {
  if [[ $DRY_RUN == 1 ]]; then
    quote_all "$@"
    echo
  else
    "$@"
  fi
}

project_flag() {
  if [[ -n ${PROJECT:-} ]]; then echo "--project=$PROJECT"; fi
}

tpu() {
  # shellcheck disable=SC2046
  run gcloud compute tpus tpu-vm "$1" "$TPU_NAME" --zone="$ZONE" $(project_flag) "${@:2}"
}

queued() {
  # shellcheck disable=SC2046
  run gcloud compute tpus queued-resources "$1" "$QUEUED_RESOURCE" --zone="$ZONE" \
    $(project_flag) "${@:2}"
}

on_all_workers() {
  tpu ssh --worker=all --command="$1"
}

require_run_settings() {
  [[ -n ${WORKDIR:-} ]] || die "set WORKDIR to a gs:// directory for checkpoints and metrics"
  [[ -n ${TFDS_DATA_DIR:-} ]] ||
    die "set TFDS_DATA_DIR to the gs:// directory holding the prepared tfds datasets"
}

create() {
  if [[ $SPOT == 1 || $QUEUED == 1 ]]; then
    local spot=()
    [[ $SPOT == 1 ]] && spot=(--spot)
    queued create --node-id="$TPU_NAME" --accelerator-type="$ACCELERATOR" \
      --runtime-version="$RUNTIME" "${spot[@]}"
    wait_until_active
  else
    tpu create --accelerator-type="$ACCELERATOR" --version="$RUNTIME"
  fi
}

# The queued resource's state: WAITING_FOR_RESOURCES, PROVISIONING, ACTIVE, SUSPENDED
# (preempted), FAILED... (empty when it does not exist). A dry run prints the query and
# answers DRY_RUN_STATE (default ACTIVE).
queued_state() {
  if [[ $DRY_RUN == 1 ]]; then
    queued describe --format='value(state.state)' >&2
    echo "${DRY_RUN_STATE:-ACTIVE}"
  else
    queued describe --format='value(state.state)' 2>/dev/null || true
  fi
}

wait_until_active() {
  local state
  if [[ $DRY_RUN == 1 ]]; then
    queued_state >/dev/null # shows the polling command; a dry run does not wait
    return 0
  fi
  while true; do
    state=$(queued_state)
    echo "queued resource $QUEUED_RESOURCE: ${state:-missing}" >&2
    case "$state" in
      ACTIVE) return 0 ;;
      FAILED | SUSPENDED | "") die "queued resource $QUEUED_RESOURCE is ${state:-missing}" ;;
    esac
    sleep 30
  done
}

setup() {
  TARBALL=${TMPDIR:-/tmp}/ssljax-$$.tgz
  trap 'rm -f "$TARBALL"' EXIT
  run tar czf "$TARBALL" -C "$ROOT" --exclude=./.git --exclude=./runs --exclude=./.venv \
    --exclude=__pycache__ --exclude='*.egg-info' .
  # shellcheck disable=SC2046
  run gcloud compute tpus tpu-vm scp "$TARBALL" "$TPU_NAME:ssljax.tgz" --zone="$ZONE" \
    $(project_flag) --worker=all
  local install
  install=$(
    cat <<EOF
set -e
command -v uv >/dev/null || [ -x ~/.local/bin/uv ] || curl -LsSf https://astral.sh/uv/install.sh | sh
export PATH=\$HOME/.local/bin:\$PATH
mkdir -p ~/$REMOTE_DIR && tar xzf ~/ssljax.tgz -C ~/$REMOTE_DIR && rm ~/ssljax.tgz
[ -x ~/$REMOTE_VENV/bin/python ] || uv venv --seed --python $PYTHON_VERSION --managed-python ~/$REMOTE_VENV
cd ~/$REMOTE_DIR && ~/$REMOTE_VENV/bin/python -m pip install -q -e '.[tpu]'
~/$REMOTE_VENV/bin/python -c 'import jax, ssljax; print(jax.process_index(), jax.device_count(), jax.devices()[0].device_kind)'
EOF
  )
  on_all_workers "$install"
}

# Start `python ARGS...` detached on every worker (it survives the ssh session), output
# in ~/ssljax/logs/NAME.log on each worker. One run at a time: a worker whose last run is
# still alive (~/ssljax/logs/running.pid) refuses, since both would claim the TPU.
detached_on_all_workers() {
  local name=$1
  shift
  local cmd
  cmd=$(
    cat <<EOF
cd ~/$REMOTE_DIR && mkdir -p logs
if [ -f logs/running.pid ] && kill -0 "\$(cat logs/running.pid)" 2>/dev/null; then
  echo "\$(hostname): ssljax is still running (pid \$(cat logs/running.pid)): wait for it, or stop it with: kill \$(cat logs/running.pid)" >&2
  exit 3
fi
TFDS_DATA_DIR=$(quote "$TFDS_DATA_DIR") nohup ~/$REMOTE_VENV/bin/python $(quote_all "$@") > logs/$name.log 2>&1 < /dev/null &
echo \$! > logs/running.pid
EOF
  )
  on_all_workers "$cmd"
  echo "started on all workers; follow with: launch/tpu_pod.sh logs $name" >&2
}

train() {
  [[ $# -ge 1 ]] || die "usage: launch/tpu_pod.sh train CONFIG[:PRESET] [--config.x=y ...]"
  require_run_settings
  local config=$1
  shift
  detached_on_all_workers train main.py --config="$config" --workdir="$WORKDIR" \
    --distributed "$@"
}

evaluate() {
  [[ $# -ge 1 ]] || die "usage: launch/tpu_pod.sh eval knn|linear|semi|perceptual [FLAGS...]"
  require_run_settings
  local protocol=$1
  shift
  detached_on_all_workers "eval-$protocol" -m ssljax.eval "$protocol" --workdir="$WORKDIR" \
    --distributed "$@"
}

logs() {
  local name=${1:-train}
  local follow="-n ${LINES_SHOWN:-40}"
  [[ ${FOLLOW:-0} == 1 ]] && follow="-n ${LINES_SHOWN:-40} -F"
  on_all_workers "tail $follow ~/$REMOTE_DIR/logs/$(quote "$name").log | sed \"s/^/\$(hostname): /\""
}

status() {
  if [[ $SPOT == 1 || $QUEUED == 1 ]]; then
    queued describe --format='value(state.state)'
  fi
  tpu describe --format='value(state,acceleratorType,runtimeVersion,health)'
  on_all_workers 'pid=$(cat ~/ssljax/logs/running.pid 2>/dev/null) && kill -0 "$pid" 2>/dev/null && echo "$(hostname): $(ps -o etime=,args= -p "$pid")" || echo "$(hostname): idle"'
}

remote_shell() {
  if [[ $# -eq 0 ]]; then
    tpu ssh --worker="${WORKER:-0}"
  else
    tpu ssh --worker="${WORKER:-0}" --command="$(quote_all "$@")"
  fi
}

delete() {
  if [[ $SPOT == 1 || $QUEUED == 1 ]]; then
    queued delete --force --quiet
  else
    tpu delete --quiet
  fi
}

resume() {
  [[ $# -ge 1 ]] || die "usage: launch/tpu_pod.sh resume CONFIG[:PRESET] [--config.x=y ...]"
  require_run_settings
  [[ $SPOT == 1 || $QUEUED == 1 ]] ||
    die "resume re-provisions a queued resource: set SPOT=1 (or QUEUED=1) as for create"
  local state
  state=$(queued_state)
  echo "queued resource $QUEUED_RESOURCE: ${state:-missing}" >&2
  if [[ $state != ACTIVE ]]; then
    # A preempted (SUSPENDED) or FAILED request never comes back by itself: replace it.
    [[ -n $state ]] && queued delete --force --quiet
    create
  fi
  setup
  train "$@"
}

options_done=0
while [[ $options_done == 0 && $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY_RUN=1 && shift ;;
    --spot) SPOT=1 && shift ;;
    --queued) QUEUED=1 && shift ;;
    -h | --help) usage && exit 0 ;;
    *) options_done=1 ;;
  esac
done

command=${1:-}
if [[ -z $command ]]; then
  usage
  exit 2
fi
shift

if [[ -z ${RUNTIME:-} ]]; then
  RUNTIME=$(runtime_for "$ACCELERATOR") ||
    die "no TPU runtime known for ACCELERATOR=$ACCELERATOR: set RUNTIME (see https://cloud.google.com/tpu/docs/runtimes)"
fi

case "$command" in
  create) create ;;
  setup) setup ;;
  train) train "$@" ;;
  eval) evaluate "$@" ;;
  logs) logs "$@" ;;
  status) status ;;
  ssh) remote_shell "$@" ;;
  resume) resume "$@" ;;
  delete) delete ;;
  help) usage ;;
  *)
    usage >&2
    die "unknown command '$command'"
    ;;
esac
