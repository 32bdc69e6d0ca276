#!/usr/bin/env bash
# Build the enclave image file (EIF) and record its measurements for clients to pin.
#
# Usage: eif/build.sh [--output-dir DIR] [--measurements FILE] [--egress-env FILE]
#                     [--image NAME:TAG] [--signing-certificate CERT --private-key KEY]
#
#   --output-dir DIR         build outputs (default eif/build): context/, payload.json,
#                            perf-aggregator.eif, build-enclave.json, describe-eif.json
#   --measurements FILE      where to write the pinned PCRs (default eif/measurements.json)
#   --egress-env FILE        AWS_REGION and EGRESS_ALLOWLIST baked into the image
#                            (default deploy/egress.env)
#   --image NAME:TAG         local Docker image name (default perf-aggregator-enclave:build)
#   --signing-certificate CERT, --private-key KEY
#                            sign the EIF (adds PCR8, the certificate's hash); both or neither
#
# Steps: build the deterministic payload (python -m scripts.build_payload), stage a
# minimal Docker context, `docker buildx build` with SOURCE_DATE_EPOCH and rewritten
# timestamps, `nitro-cli build-enclave`, `nitro-cli describe-eif`, then
# `python -m scripts.measurements record` cross-checks the two answers and writes the
# measurements file. Needs docker (with buildx) and nitro-cli, so an EC2 instance with
# Nitro Enclaves enabled or a build host with aws-nitro-enclaves-cli; stops before doing
# anything when a tool is missing.
#
# Environment: KMS_KEY_ID (required: the full ARN of the sealing key, baked into the
# measured image so that the enclave unlocks with that key only; create the key first,
# docs/deploy.md step 4); SOURCE_DATE_EPOCH (default 315532800, 1980-01-01: build
# outputs do not depend on when they were built); PYTHON (default .venv/bin/python,
# else python3).
set -euo pipefail

readonly EIF_NAME="perf-aggregator.eif"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

die() {
    printf 'eif/build.sh: %s\n' "$*" >&2
    exit 1
}

usage() {
    # The header comment, up to the first line that is not a comment.
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"
}

output_dir="${repo}/eif/build"
measurements="${repo}/eif/measurements.json"
egress_env="${repo}/deploy/egress.env"
image="perf-aggregator-enclave:build"
certificate=""
private_key=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --output-dir) output_dir="${2:?--output-dir needs a value}"; shift 2 ;;
        --measurements) measurements="${2:?--measurements needs a value}"; shift 2 ;;
        --egress-env) egress_env="${2:?--egress-env needs a value}"; shift 2 ;;
        --image) image="${2:?--image needs a value}"; shift 2 ;;
        --signing-certificate) certificate="${2:?--signing-certificate needs a value}"; shift 2 ;;
        --private-key) private_key="${2:?--private-key needs a value}"; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown option: $1 (see --help)" ;;
    esac
done

# Tools first: nothing is built or written when one is missing.
python="${PYTHON:-}"
if [[ -z "${python}" ]]; then
    if [[ -x "${repo}/.venv/bin/python" ]]; then
        python="${repo}/.venv/bin/python"
    else
        python="python3"
    fi
fi
command -v "${python}" >/dev/null 2>&1 || die "python not found (${python}); run 'make install' first"
command -v docker >/dev/null 2>&1 \
    || die "docker not found on PATH: install Docker with buildx (docs/deploy.md, step 2)"
command -v nitro-cli >/dev/null 2>&1 \
    || die "nitro-cli not found on PATH: install aws-nitro-enclaves-cli on an instance with Nitro Enclaves enabled (docs/deploy.md, step 1)"
docker buildx version >/dev/null 2>&1 \
    || die "docker buildx is not available: install the buildx plugin (Docker 25 or newer)"
if [[ -n "${certificate}" || -n "${private_key}" ]]; then
    [[ -n "${certificate}" && -n "${private_key}" ]] \
        || die "--signing-certificate and --private-key go together"
    [[ -f "${certificate}" ]] || die "signing certificate not found: ${certificate}"
fi
[[ -f "${egress_env}" ]] || die "egress allowlist file not found: ${egress_env}"

# KEY=VALUE lines only (the systemd EnvironmentFile subset); never sourced as shell.
env_value() {
    local key="$1" line value=""
    while IFS= read -r line || [[ -n "${line}" ]]; do
        if [[ "${line}" == "${key}="* ]]; then
            value="${line#"${key}="}"
        fi
    done <"${egress_env}"
    printf '%s' "${value}"
}
aws_region="$(env_value AWS_REGION)"
egress_allowlist="$(env_value EGRESS_ALLOWLIST)"
[[ -n "${aws_region}" ]] || die "${egress_env} sets no AWS_REGION"
[[ -n "${egress_allowlist}" ]] || die "${egress_env} sets no EGRESS_ALLOWLIST"
kms_key_id="${KMS_KEY_ID:-}"
[[ "${kms_key_id}" == arn:aws*:kms:*:key/* ]] \
    || die "set KMS_KEY_ID to the full ARN of the sealing key (arn:aws:kms:REGION:ACCOUNT:key/ID); it is baked into the measured image"
# The enclave needs KMS for sealing: the list must allow KMS in that region.
PYTHONPATH="${repo}" "${python}" - "${aws_region}" "${egress_allowlist}" <<'PY' || die "invalid ${egress_env}"
import sys

from shared.allowlist import Allowlist, kms_host

region, text = sys.argv[1], sys.argv[2]
try:
    allowlist = Allowlist.parse(text)
    kms = kms_host(region)
except ValueError as exc:
    sys.exit(f"egress allowlist: {exc}")
if kms not in allowlist.entries:
    sys.exit(f"EGRESS_ALLOWLIST must include {kms} (AWS_REGION={region})")
PY

export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-315532800}"
context="${output_dir}/context"
eif="${output_dir}/${EIF_NAME}"
mkdir -p "${output_dir}"
rm -rf "${context}"
mkdir -p "${context}"

echo "==> payload" >&2
PYTHONPATH="${repo}" "${python}" -m scripts.build_payload --output "${context}/payload.tar" \
    >"${output_dir}/payload.json"

echo "==> docker context" >&2
install -m 0644 "${repo}/eif/requirements.lock" "${context}/requirements.lock"
install -m 0755 "${repo}/eif/entrypoint.sh" "${context}/entrypoint.sh"
install -m 0644 "${repo}/eif/seed_entropy.py" "${context}/seed_entropy.py"
touch -d "@${SOURCE_DATE_EPOCH}" "${context}"/*

echo "==> docker image ${image}" >&2
docker buildx build \
    --file "${repo}/eif/Dockerfile" \
    --build-arg "SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH}" \
    --build-arg "AWS_REGION=${aws_region}" \
    --build-arg "EGRESS_ALLOWLIST=${egress_allowlist}" \
    --build-arg "KMS_KEY_ID=${kms_key_id}" \
    --provenance=false \
    --output "type=docker,name=${image},rewrite-timestamp=true" \
    "${context}"

echo "==> enclave image ${eif}" >&2
sign_args=()
if [[ -n "${certificate}" ]]; then
    sign_args=(--signing-certificate "${certificate}" --private-key "${private_key}")
fi
nitro-cli build-enclave --docker-uri "${image}" --output-file "${eif}" "${sign_args[@]}" \
    >"${output_dir}/build-enclave.json"
nitro-cli describe-eif --eif-path "${eif}" >"${output_dir}/describe-eif.json"

echo "==> measurements ${measurements}" >&2
PYTHONPATH="${repo}" "${python}" -m scripts.measurements record \
    --describe-eif "${output_dir}/describe-eif.json" \
    --build-output "${output_dir}/build-enclave.json" \
    --payload-manifest "${output_dir}/payload.json" \
    --output "${measurements}"

cat >&2 <<EOF
==> done. Publish ${measurements} (commit it, attach it to the release) so clients pin it:
    perf-agg --pcrs ${measurements} attest
and generate the KMS key policy from it:
    scripts/kms-policy --measurements ${measurements} --role-arn <instance role ARN>
EOF
