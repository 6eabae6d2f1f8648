#!/usr/bin/env bash
# Runs a command on every worker (host) of a Cloud TPU VM slice.
#
#   export TPU_NAME=cure-v4-32 ZONE=us-central2-b ACCELERATOR_TYPE=v4-32
#   launch/tpu_pod.sh create                # create the slice
#   launch/tpu_pod.sh copy                  # working tree -> every worker
#   launch/tpu_pod.sh install               # jax[tpu] + package, every worker
#   launch/tpu_pod.sh run python3 -m cure_jax.main \
#       --config=configs/cifar10.py --workdir=gs://BUCKET/runs/cifar10-large
#   launch/tpu_pod.sh delete
#   launch/tpu_pod.sh up python3 -m ...     # create, copy, install, run
#
# `run` sets CURE_DISTRIBUTED=auto, so cure_jax.parallel.initialize() calls
# jax.distributed.initialize() without arguments and JAX finds coordinator,
# process count and rank from the TPU metadata. Each worker loads
# global_batch_size / num_workers examples. The workdir must be visible to
# every worker (a gs:// bucket); only process 0 writes logs and summaries.
#
# Settings (environment):
#   TPU_NAME, ZONE, ACCELERATOR_TYPE  required
#   RUNTIME_VERSION  default by generation: v6e v2-alpha-tpuv6e, v5p
#                    v2-alpha-tpuv5, v5e v2-alpha-tpuv5-lite, else
#                    tpu-ubuntu2204-base
#   PROJECT          gcloud project (default: gcloud's configured one)
#   JAX_VERSION      jax[tpu] version to install (default 0.10.2, tested)
#   REMOTE_DIR       checkout on the workers (default cure_jax, under ~)
#   EXTRA_CREATE_FLAGS  more flags for `tpu-vm create`, e.g. --spot

set -euo pipefail

usage() {
  sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

require() {
  local name
  for name in "$@"; do
    if [[ -z "${!name:-}" ]]; then
      echo "error: set ${name} (see the header of $0)" >&2
      exit 2
    fi
  done
}

default_runtime() {
  case "${ACCELERATOR_TYPE}" in
    v6e-*) echo v2-alpha-tpuv6e ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v5litepod-* | v5e-*) echo v2-alpha-tpuv5-lite ;;
    *) echo tpu-ubuntu2204-base ;;
  esac
}

tpu_vm() {  # tpu_vm VERB [FLAGS...]: gcloud compute tpus tpu-vm on our slice.
  local verb="$1"
  shift
  gcloud compute tpus tpu-vm "${verb}" "${TPU_NAME}" --zone="${ZONE}" \
    ${PROJECT:+--project="${PROJECT}"} "$@"
}

on_all_workers() {  # on_all_workers 'shell command'
  tpu_vm ssh --worker=all --command="$1"
}

create() {
  require ACCELERATOR_TYPE
  # shellcheck disable=SC2086  # EXTRA_CREATE_FLAGS is a list of flags.
  tpu_vm create --accelerator-type="${ACCELERATOR_TYPE}" \
    --version="${RUNTIME_VERSION:-$(default_runtime)}" ${EXTRA_CREATE_FLAGS:-}
}

copy() {
  # Tracked and untracked-but-not-ignored files: no workdirs, no caches.
  local repo archive
  repo="$(git -C "$(dirname "$0")" rev-parse --show-toplevel)"
  archive="$(mktemp "${TMPDIR:-/tmp}/cure_jax.XXXXXX")"
  # shellcheck disable=SC2064  # Expand now: the local is gone at exit.
  trap "rm -f '${archive}'" EXIT
  git -C "${repo}" ls-files -z --cached --others --exclude-standard |
    while IFS= read -r -d '' file; do  # Skip files deleted since the commit.
      [[ -e "${repo}/${file}" ]] && printf '%s\0' "${file}"
    done |
    tar -C "${repo}" --null -T - -czf "${archive}"
  gcloud compute tpus tpu-vm scp "${archive}" "${TPU_NAME}:~/cure_jax.tar.gz" \
    --worker=all --zone="${ZONE}" ${PROJECT:+--project="${PROJECT}"}
  on_all_workers "rm -rf ~/${REMOTE_DIR} && mkdir -p ~/${REMOTE_DIR} &&
    tar -C ~/${REMOTE_DIR} -xzf ~/cure_jax.tar.gz && rm ~/cure_jax.tar.gz"
}

install() {
  on_all_workers "cd ~/${REMOTE_DIR} &&
    python3 -m pip install --quiet --upgrade pip &&
    python3 -m pip install --quiet 'jax[tpu]==${JAX_VERSION}' -e ."
}

run() {
  [[ $# -gt 0 ]] || usage
  local command
  printf -v command '%q ' "$@"
  on_all_workers "cd ~/${REMOTE_DIR} && CURE_DISTRIBUTED=auto ${command}"
}

delete() {
  tpu_vm delete --quiet
}

main() {
  [[ $# -gt 0 ]] || usage
  require TPU_NAME ZONE
  JAX_VERSION="${JAX_VERSION:-0.10.2}"
  REMOTE_DIR="${REMOTE_DIR:-cure_jax}"
  local action="$1"
  shift
  case "${action}" in
    create | copy | install | delete)
      [[ $# -eq 0 ]] || usage
      "${action}" ;;
    run) run "$@" ;;
    up)
      [[ $# -gt 0 ]] || usage
      create && copy && install && run "$@" ;;
    *) usage ;;
  esac
}

main "$@"
