#!/usr/bin/env bash
# Start the perf-aggregator enclave with nitro-cli. Side: parent host (operator).
#
# Usage: scripts/run-enclave.sh --eif FILE [--measurements FILE] [--memory MIB] [--cpus N]
#                               [--cid CID] [--name NAME] [--debug] [--skip-measurement-check]
#
#   --eif FILE               the enclave image (eif/build.sh writes eif/build/perf-aggregator.eif)
#   --measurements FILE      the published PCRs the image must match (default eif/measurements.json)
#   --memory MIB             enclave memory in MiB (default 4096; within the allocator's share)
#   --cpus N                 enclave vCPUs (default 2; within the allocator's share, whole cores)
#   --cid CID                enclave vsock CID (default 16; the parent's ENCLAVE_CID must match)
#   --name NAME              enclave name for nitro-cli console/terminate (default perf-aggregator)
#   --debug                  debug mode: readable console, and attestation documents with
#                            all-zero PCRs, which every client refuses. Never for users.
#   --skip-measurement-check start an image whose PCRs differ from the published ones
#
# Before starting, the image's PCRs (nitro-cli describe-eif) are compared with the
# published measurements: an image clients would refuse is not started by mistake.
# Prints nitro-cli's run-enclave answer (JSON) on stdout.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

die() {
    printf 'run-enclave: %s\n' "$*" >&2
    exit 1
}

usage() {
    # The header comment, up to the first line that is not a comment.
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"
}

positive_integer() {
    # $1 = option name, $2 = value, $3 = lowest allowed value
    if ! [[ "$2" =~ ^[0-9]{1,10}$ ]] || ((10#$2 < $3)); then
        die "$1 must be a whole number >= $3"
    fi
}

eif=""
measurements="${repo}/eif/measurements.json"
memory=4096
cpus=2
cid=16
name="perf-aggregator"
debug=0
check=1
while [[ $# -gt 0 ]]; do
    case "$1" in
        --eif) eif="${2:?--eif needs a value}"; shift 2 ;;
        --measurements) measurements="${2:?--measurements needs a value}"; shift 2 ;;
        --memory) memory="${2:?--memory needs a value}"; shift 2 ;;
        --cpus) cpus="${2:?--cpus needs a value}"; shift 2 ;;
        --cid) cid="${2:?--cid needs a value}"; shift 2 ;;
        --name) name="${2:?--name needs a value}"; shift 2 ;;
        --debug) debug=1; shift ;;
        --skip-measurement-check) check=0; shift ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown option: $1 (see --help)" ;;
    esac
done

[[ -n "${eif}" ]] || die "--eif is required"
positive_integer --memory "${memory}" 64
positive_integer --cpus "${cpus}" 1
# CIDs 0-2 are reserved and 3 is the parent (the enclave dials it for egress).
positive_integer --cid "${cid}" 4
[[ "${name}" =~ ^[A-Za-z0-9._-]{1,64}$ ]] || die "--name may use letters, digits, '.', '_', '-'"
command -v nitro-cli >/dev/null 2>&1 \
    || die "nitro-cli not found on PATH: install aws-nitro-enclaves-cli (docs/deploy.md, step 1)"
[[ -f "${eif}" ]] || die "enclave image not found: ${eif}"

if ((check)); then
    python="${PYTHON:-}"
    if [[ -z "${python}" ]]; then
        if [[ -x "${repo}/.venv/bin/python" ]]; then
            python="${repo}/.venv/bin/python"
        else
            python="python3"
        fi
    fi
    [[ -f "${measurements}" ]] \
        || die "published measurements not found: ${measurements} (or pass --skip-measurement-check)"
    described="$(mktemp)"
    trap 'rm -f "${described}"' EXIT
    nitro-cli describe-eif --eif-path "${eif}" >"${described}"
    PYTHONPATH="${repo}" "${python}" -m scripts.measurements check \
        --describe-eif "${described}" --measurements "${measurements}" >&2 \
        || die "not starting an image that clients pinned to ${measurements} would refuse"
    rm -f "${described}"
    trap - EXIT
else
    printf 'run-enclave: WARNING: measurement check skipped\n' >&2
fi

mode_args=()
if ((debug)); then
    cat >&2 <<'EOF'
run-enclave: WARNING: DEBUG MODE. The console shows everything the enclave prints, and
its attestation documents carry all-zero PCRs: every client refuses them, and the KMS
key policy denies them. Use it only to diagnose a boot; never let users submit keys.
Console: nitro-cli console --enclave-name NAME
EOF
    mode_args=(--debug-mode)
else
    printf 'run-enclave: production mode (attestation carries the measured PCRs)\n' >&2
fi

exec nitro-cli run-enclave --eif-path "${eif}" --memory "${memory}" --cpu-count "${cpus}" \
    --enclave-cid "${cid}" --enclave-name "${name}" "${mode_args[@]}"
