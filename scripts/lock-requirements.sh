#!/usr/bin/env bash
# Regenerate the hash-pinned requirement locks of the production images from PyPI:
#   eif/requirements.in           -> eif/requirements.lock            (enclave image)
#   deploy/parent/requirements.in -> deploy/parent/requirements.lock  (parent image)
#
# Usage: scripts/lock-requirements.sh            (or: make lock)
#
# pip-tools runs in a throwaway virtualenv; versions the dev environment (.venv) already
# has are kept (`pip freeze` as constraints), so the images run what the test suite ran.
# Every distribution file of every pinned version gets a --hash line; eif/Dockerfile and
# deploy/parent/Dockerfile install with `pip install --require-hashes --only-binary=:all:`.
# Needs network access to PyPI. Local pip configuration (find-links, extra indexes,
# constraints) is ignored so that the locks name PyPI files only.
set -euo pipefail

readonly PIP_TOOLS_VERSION="7.6.2"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3}"
dev_python="${repo}/.venv/bin/python"

work="$(mktemp -d)"
trap 'rm -rf "${work}"' EXIT

"${python}" -m venv "${work}/venv"
env -u PIP_FIND_LINKS -u PIP_CONSTRAINT -u PIP_EXTRA_INDEX_URL PIP_CONFIG_FILE=/dev/null \
    "${work}/venv/bin/pip" install --quiet "pip-tools==${PIP_TOOLS_VERSION}"

constraints=()
if [[ -x "${dev_python}" ]]; then
    "${dev_python}" -m pip freeze --exclude-editable >"${work}/constraints.txt"
    constraints=(--constraint "${work}/constraints.txt")
fi

for base in eif/requirements deploy/parent/requirements; do
    echo "lock: ${base}.in -> ${base}.lock" >&2
    (
        cd "${repo}"
        env -u PIP_FIND_LINKS -u PIP_CONSTRAINT -u PIP_EXTRA_INDEX_URL PIP_CONFIG_FILE=/dev/null \
            CUSTOM_COMPILE_COMMAND="make lock" \
            "${work}/venv/bin/pip-compile" --quiet --generate-hashes --allow-unsafe \
            --strip-extras --no-emit-index-url --no-emit-find-links \
            --index-url https://pypi.org/simple \
            "${constraints[@]}" \
            --output-file "${base}.lock" "${base}.in"
    )
    # The constraints file lives in a temporary directory: keep its path out of the lock.
    sed -i '/^    #   -c /d' "${repo}/${base}.lock"
done
