#!/bin/bash
# Entrypoint of the enclave image (CMD of eif/Dockerfile). Side: enclave.
#
# The Nitro enclave init starts this as root with the image's environment, which is part
# of the measurement: nothing here is read from the parent. In order:
#   0. refuse anything but production settings (no simulator, no TCP transport, no test
#      CA): fail closed before touching anything;
#   1. bring up lo: the enclave init leaves it down, and the service's egress CONNECT
#      proxy listens on 127.0.0.1 (the kernel gives lo 127.0.0.1/8 when it comes up);
#   2. seed and credit the kernel RNG from the NSM (seed_entropy.py), so TLS and
#      os.urandom are seeded before the first key is made; the service also mixes NSM
#      bytes into its own keys (enclave/keys.py);
#   3. set production mode (ENCLAVE_MODE=production, ENCLAVE_TRANSPORT=vsock) and give
#      /dev/nsm to the service group;
#   4. exec the enclave service as uid/gid 10001, no capabilities, no_new_privs.
# Any failing step stops the boot (set -e): an enclave that cannot do all of this
# must not serve.
set -euo pipefail

readonly BIN_DIR="/opt/perf-aggregator/bin"
readonly SERVICE_UID=10001
readonly SERVICE_GID=10001
# Settable only through the measured image environment (tests point them elsewhere).
NSM_DEVICE="${NSM_DEVICE:-/dev/nsm}"
PATH="${PATH:-/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin}"
export PATH

log() {
    printf 'entrypoint: %s\n' "$*" >&2
}

refuse() {
    log "refused: $*"
    exit 78 # EX_CONFIG
}

# 0. Production only.
mode="${ENCLAVE_MODE:-production}"
if [[ "${mode}" != "production" ]]; then
    refuse "ENCLAVE_MODE=${mode}: this image runs in production mode only (the simulator is for development)"
fi
transport="${ENCLAVE_TRANSPORT:-vsock}"
if [[ "${transport}" != "vsock" ]]; then
    refuse "ENCLAVE_TRANSPORT=${transport}: production requires vsock"
fi
for setting in VSOCK_PORT_MAP EXCHANGE_CA_FILE; do
    if [[ -n "${!setting:-}" ]]; then
        refuse "${setting} is a simulator setting"
    fi
done

# 1. Loopback.
log "bringing up lo"
ip link set dev lo up

# 2. Entropy.
log "seeding the kernel RNG from ${NSM_DEVICE}"
python3 "${BIN_DIR}/seed_entropy.py" --device "${NSM_DEVICE}"

# 3. Production mode, and the NSM for the service's group only.
export ENCLAVE_MODE=production
export ENCLAVE_TRANSPORT=vsock
chown "0:${SERVICE_GID}" "${NSM_DEVICE}"
chmod 0660 "${NSM_DEVICE}"

# 4. The service replaces this shell (it receives SIGTERM directly).
log "starting the enclave service as ${SERVICE_UID}:${SERVICE_GID}"
exec setpriv --reuid="${SERVICE_UID}" --regid="${SERVICE_GID}" --clear-groups \
    --no-new-privs --inh-caps=-all --bounding-set=-all \
    -- python3 -m enclave
