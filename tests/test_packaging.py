"""Production packaging, checked without Docker, nitro-cli or Nitro hardware.

eif/ (Dockerfile, entrypoint, entropy seeding, build script), the hash-pinned locks,
the deterministic payload, the measurements file and the KMS key policy generated from
it, run-enclave.sh, the allowlists and systemd units in deploy/, and the commands of
docs/deploy.md. Shell scripts run in temporary directories with stub ``ip``,
``python3``, ``setpriv``, ``docker`` and ``nitro-cli`` on PATH that record their calls.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tarfile
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from enclave.config import EnclaveConfig, Mode
from enclave.measurement import simulated_pcrs
from enclave.nsm import (
    ErrorCode,
    ErrorResponse,
    GetRandomResponse,
    NsmClient,
    NsmError,
    encode_response,
)
from parent.config import Mode as ParentMode
from parent.config import ParentConfig
from scripts import build_payload, measurements
from shared.allowlist import Allowlist, default_allowlist
from shared.cli import read_pcrs_file

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = [ROOT / "eif" / "Dockerfile", ROOT / "deploy" / "parent" / "Dockerfile"]
LOCKS = {
    "enclave": (ROOT / "eif" / "requirements.in", ROOT / "eif" / "requirements.lock"),
    "parent": (
        ROOT / "deploy" / "parent" / "requirements.in",
        ROOT / "deploy" / "parent" / "requirements.lock",
    ),
}
DIGEST = re.compile(r"[^\s@]+@sha256:[0-9a-f]{64}")
INSTRUCTIONS = {
    "ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM", "LABEL", "RUN",
    "USER", "WORKDIR",
}  # fmt: skip
BASH = shutil.which("bash") or "/bin/bash"
SYSTEM_PATH = "/usr/bin:/bin"  # coreutils and bash; no docker, no nitro-cli

# Made-up SHA-384 values in nitro-cli's shape (lowercase hex, 48 bytes).
PCR0 = "a1" * 48
PCR1 = "b2" * 48
PCR2 = "c3" * 48
PCR8 = "d4" * 48
ROLE = "arn:aws:iam::111122223333:role/perf-aggregator"


# ------------------------------------------------------------------------ helpers


def dockerfile(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue  # Docker drops comment lines, also inside a continuation
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, arguments = (pending + stripped).partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        pending = ""
    assert not pending, f"{path}: dangling line continuation"
    return instructions


def stages(path: Path) -> list[tuple[str, str | None, list[tuple[str, str]]]]:
    """(base image, stage name, instructions) for every FROM of a Dockerfile."""
    result: list[tuple[str, str | None, list[tuple[str, str]]]] = []
    for keyword, arguments in dockerfile(path):
        if keyword == "FROM":
            words = [w for w in arguments.split() if not w.startswith("--platform=")]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            result.append((words[0], name, []))
        else:
            assert result, f"{path}: {keyword} before FROM"
            result[-1][2].append((keyword, arguments))
    return result


def env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of a systemd EnvironmentFile (comments and blanks skipped)."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, sep, value = line.partition("=")
            assert sep and re.fullmatch(r"[A-Z_][A-Z0-9_]*", key), f"{path}: bad line {line!r}"
            values[key] = value
    return values


def vsock_proxy_allowlist(path: Path) -> list[str]:
    """Entries of AWS vsock-proxy's YAML (``allowlist:`` then ``- {address: h, port: p}``)."""
    entries: list[str] = []
    seen_key = False
    for line in path.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line == "allowlist:":
            seen_key = True
            continue
        match = re.fullmatch(r"- \{address: ([a-z0-9.-]+), port: ([0-9]+)\}", line)
        assert seen_key and match, f"{path}: unexpected line {line!r}"
        entries.append(f"{match[1]}:{match[2]}")
    return entries


def stub(directory: Path, name: str, body: str) -> None:
    """An executable bash script ``name`` in ``directory`` that logs its call to $STUB_LOG."""
    path = directory / name
    path.write_text(
        "#!/bin/bash\nset -eu\n"
        f'printf "%s\\n" "{name} $* | mode=${{ENCLAVE_MODE:-}} transport=${{ENCLAVE_TRANSPORT:-}}"'
        ' >>"$STUB_LOG"\n' + body
    )
    path.chmod(0o755)


def calls(log: Path) -> list[str]:
    """The stub calls recorded so far, one per line."""
    return log.read_text().splitlines() if log.exists() else []


def run(
    command: list[str], env: Mapping[str, str], cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    """Run with exactly ``env`` (nothing inherited), capture text output."""
    return subprocess.run(
        command, env=dict(env), cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def describe_eif(*, signed: bool = False, pcr0: str = PCR0) -> dict[str, object]:
    """``nitro-cli describe-eif`` answer, in the field names of nitro-cli's json_output.rs."""
    measured = {"HashAlgorithm": "Sha384 { ... }", "PCR0": pcr0, "PCR1": PCR1, "PCR2": PCR2}
    document: dict[str, object] = {
        "EifVersion": 4,
        "Measurements": measured,
        "IsSigned": signed,
        "CheckCRC": True,
        "ImageName": "perf-aggregator-enclave",
        "ImageVersion": "build",
        "Metadata": {
            "BuildTime": "2026-01-01T00:00:00Z",
            "BuildTool": "nitro-cli",
            "BuildToolVersion": "1.4.2",
            "OperatingSystem": "Linux",
            "KernelVersion": "6.1",
            "DockerInfo": {},
        },
    }
    if signed:
        measured["PCR8"] = PCR8
        document["SignatureCheck"] = True
        document["SigningCertificate"] = {
            "IssuerName": {"commonName": "perf-aggregator release"},
            "Algorithm": "ecdsa-with-SHA384",
            "NotBefore": "Jan 1 00:00:00 2026 +00:00",
            "NotAfter": "Jan 1 00:00:00 2027 +00:00",
            "Signature": "30:65",
        }
    return document


def build_output(*, signed: bool = False) -> dict[str, object]:
    """``nitro-cli build-enclave`` answer: the Measurements object only."""
    return {"Measurements": describe_eif(signed=signed)["Measurements"]}


def write_json(path: Path, value: object) -> Path:
    path.write_text(json.dumps(value))
    return path


def measurements_file(tmp_path: Path, *, signed: bool = False, name: str = "m.json") -> Path:
    """A measurements file as eif/build.sh writes it."""
    document = measurements.record(describe_eif(signed=signed), build_output(signed=signed))
    return write_json(tmp_path / name, document)


def nitro_stubs(bin_dir: Path, tmp_path: Path, describe: Mapping[str, object]) -> None:
    """Stub docker and nitro-cli: recorded answers, EIF file written, context listed."""
    describe_path = write_json(tmp_path / "stub-describe.json", describe)
    build_path = write_json(
        tmp_path / "stub-build.json", {"Measurements": describe["Measurements"]}
    )
    stub(
        bin_dir,
        "docker",
        'if [[ "$1 $2" == "buildx build" ]]; then\n'
        '    context="${!#}"\n'
        '    (cd "$context" && ls -A) >"$STUB_LOG.context"\n'
        "fi\n",
    )
    stub(
        bin_dir,
        "nitro-cli",
        'case "$1" in\n'
        "    build-enclave)\n"
        "        while [[ $# -gt 0 ]]; do\n"
        '            [[ "$1" == --output-file ]] && echo EIF >"$2"; shift\n'
        "        done\n"
        f"        cat {shlex.quote(str(build_path))} ;;\n"
        f"    describe-eif) cat {shlex.quote(str(describe_path))} ;;\n"
        '    run-enclave) echo \'{"EnclaveName": "perf-aggregator", "EnclaveCID": 16}\' ;;\n'
        "esac\n",
    )


# ------------------------------------------------------------------------ Dockerfiles


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_dockerfiles_pin_every_base_image_by_digest(path: Path) -> None:
    """Every FROM and COPY --from names a digest-pinned image or an earlier stage."""
    parsed = stages(path)
    assert {keyword for _, _, body in parsed for keyword, _ in body} <= INSTRUCTIONS
    names: set[str] = set()
    for image, name, body in parsed:
        assert image in names or DIGEST.fullmatch(image), f"{path}: FROM {image} is not pinned"
        for keyword, arguments in body:
            source = re.search(r"--from=(\S+)", arguments)
            if keyword in ("COPY", "ADD") and source:
                assert source[1] in names or DIGEST.fullmatch(source[1]), arguments
        if name:
            names.add(name)


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_dockerfiles_install_only_hash_checked_wheels_and_ship_no_pip(path: Path) -> None:
    """pip installs with --require-hashes from a lock, wheels only; the final stage drops pip."""
    parsed = stages(path)
    installs = [a for _, _, body in parsed for k, a in body if k == "RUN" and "pip install" in a]
    assert installs
    for command in installs:
        for flag in (
            "--require-hashes",
            "--only-binary=:all:",
            "--no-deps",
            "-r /tmp/requirements.lock",
        ):
            assert flag in command, f"{path}: pip install without {flag}"
    final = parsed[-1][2]
    assert not [a for k, a in final if k == "RUN" and "pip install" in a]
    assert any(k == "RUN" and "pip uninstall --yes" in a for k, a in final)


def test_parent_image_runs_as_an_unprivileged_user() -> None:
    """The parent container's last USER is a non-zero uid:gid."""
    users = [a for k, a in stages(DOCKERFILES[1])[-1][2] if k == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")


def test_enclave_image_environment_passes_production_config() -> None:
    """The enclave image's ENV, with build.sh's build arguments, is a valid production config."""
    egress = env_file(ROOT / "deploy" / "egress.env")
    final = stages(DOCKERFILES[0])[-1][2]
    args = {a.split("=")[0] for k, a in final if k == "ARG"}
    assert args == {"AWS_REGION", "EGRESS_ALLOWLIST", "KMS_KEY_ID"}
    build_args = egress | {"KMS_KEY_ID": "arn:aws:kms:us-east-1:111122223333:key/" + "0" * 36}
    environment: dict[str, str] = {}
    for keyword, arguments in final:
        if keyword == "ENV":
            for item in shlex.split(arguments):
                key, _, value = item.partition("=")
                environment[key] = re.sub(r"\$\{(\w+)\}", lambda m: build_args[m[1]], value)
    config = EnclaveConfig.from_env(environment)
    assert config.sealing == "kms" and config.kms_key_id == build_args["KMS_KEY_ID"]
    assert config.mode is Mode.PRODUCTION and config.transport == "vsock"
    assert config.egress_allowlist == Allowlist.parse(egress["EGRESS_ALLOWLIST"])
    assert [a for k, a in final if k == "CMD"] == ['["/opt/perf-aggregator/bin/entrypoint.sh"]']


# ------------------------------------------------------------------------ locks


def _pins(text: str) -> dict[str, str]:
    found = re.findall(r"^([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==([^\s\\;]+)", text, flags=re.M)
    return {re.sub(r"[-_.]+", "-", name).lower(): version for name, version in found}


@pytest.mark.parametrize("side", sorted(LOCKS))
def test_locks_hash_every_package(side: str) -> None:
    """Every lock entry is pinned with == and carries at least one sha256 hash."""
    text = LOCKS[side][1].read_text()
    entries = re.split(r"\n(?=[A-Za-z0-9])", text.split("\n", 6)[-1].strip())
    requirements = [e for e in entries if not e.startswith("#")]
    assert len(requirements) >= 10
    for entry in requirements:
        assert re.match(r"[A-Za-z0-9_.-]+==\S+ \\\n", entry), f"not pinned: {entry[:60]}"
        hashes = re.findall(r"--hash=sha256:([0-9a-f]+)", entry)
        assert hashes and all(len(h) == 64 for h in hashes), f"no hash: {entry[:60]}"
    assert not re.search(r"^\s*(-e|--index-url|--extra-index-url|--find-links)", text, re.M)


@pytest.mark.parametrize("side", sorted(LOCKS))
def test_lock_inputs_pin_what_pyproject_pins(side: str) -> None:
    """requirements.in pins equal pyproject's, and the lock pins those same versions."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    declared = _pins("\n".join(pyproject["project"]["dependencies"]))
    wanted = _pins(LOCKS[side][0].read_text())
    locked = _pins(LOCKS[side][1].read_text())
    assert wanted and all(declared.get(name) == version for name, version in wanted.items())
    assert all(locked.get(name) == version for name, version in wanted.items())


_IMPORT_GUARD = """
import importlib.metadata, json, re, sys
allowed = set(json.loads(sys.argv[1]))
owners = importlib.metadata.packages_distributions()
first_party = {"enclave", "shared", "parent", "scripts"}
class Guard:
    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top in sys.stdlib_module_names or top in first_party or top not in owners:
            return None
        dists = {re.sub(r"[-_.]+", "-", d).lower() for d in owners[top]}
        if not dists & allowed:
            raise ImportError(f"{name} comes from {sorted(dists)}, which the lock lacks")
        return None
sys.meta_path.insert(0, Guard())
for module in sys.argv[2:]:
    __import__(module)
print("imported")
"""


@pytest.mark.parametrize(
    ("side", "modules"),
    [
        ("enclave", ["enclave.main", "enclave.nsm"]),
        ("parent", ["parent.main", "parent.config", "parent.db.migrate"]),
    ],
)
def test_locks_cover_what_each_side_imports(side: str, modules: list[str]) -> None:
    """Every third-party module the process imports at start comes from a locked package."""
    locked = sorted(_pins(LOCKS[side][1].read_text()))
    result = run(
        [sys.executable, "-c", _IMPORT_GUARD, json.dumps(locked), *modules],
        {"PATH": SYSTEM_PATH, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "imported"


# ------------------------------------------------------------------------ entrypoint


@pytest.fixture
def sandbox(tmp_path: Path) -> dict[str, str]:
    """Stub ip/python3/chown/chmod/setpriv on PATH and a fake NSM device file."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("ip", "chown", "chmod", "setpriv"):
        stub(bin_dir, name, "")
    stub(
        bin_dir, "python3", 'if [[ "$1" == *seed_entropy.py ]]; then exit "${SEED_STATUS:-0}"; fi\n'
    )
    (tmp_path / "nsm").write_bytes(b"")
    return {
        "PATH": f"{bin_dir}:{SYSTEM_PATH}",
        "STUB_LOG": str(tmp_path / "calls.log"),
        "NSM_DEVICE": str(tmp_path / "nsm"),
    }


def test_entrypoint_runs_its_steps_in_order(sandbox: dict[str, str]) -> None:
    """lo up, NSM entropy, production mode, /dev/nsm to the service group, then exec the service."""
    result = run([BASH, str(ROOT / "eif" / "entrypoint.sh")], sandbox)
    assert result.returncode == 0, result.stderr
    nsm = sandbox["NSM_DEVICE"]
    assert calls(Path(sandbox["STUB_LOG"])) == [
        "ip link set dev lo up | mode= transport=",
        f"python3 /opt/perf-aggregator/bin/seed_entropy.py --device {nsm} | mode= transport=",
        f"chown 0:10001 {nsm} | mode=production transport=vsock",
        f"chmod 0660 {nsm} | mode=production transport=vsock",
        "setpriv --reuid=10001 --regid=10001 --clear-groups --no-new-privs --inh-caps=-all"
        " --bounding-set=-all -- python3 -m enclave | mode=production transport=vsock",
    ]


@pytest.mark.parametrize(
    "setting",
    [
        {"ENCLAVE_MODE": "simulator"},
        {"ENCLAVE_MODE": "Production"},
        {"ENCLAVE_TRANSPORT": "tcp-sim"},
        {"VSOCK_PORT_MAP": "16:5000=15000"},
        {"EXCHANGE_CA_FILE": "/tmp/test-ca.pem"},
    ],
    ids=lambda s: next(iter(s)),
)
def test_entrypoint_refuses_simulator_settings_before_doing_anything(
    sandbox: dict[str, str], setting: dict[str, str]
) -> None:
    """Any simulator setting stops the boot with EX_CONFIG and no command run."""
    result = run([BASH, str(ROOT / "eif" / "entrypoint.sh")], {**sandbox, **setting})
    assert result.returncode == 78
    assert "refused" in result.stderr and next(iter(setting)) in result.stderr
    assert calls(Path(sandbox["STUB_LOG"])) == []


def test_entrypoint_stops_when_entropy_seeding_fails(sandbox: dict[str, str]) -> None:
    """A failed NSM seeding ends the boot: the service never starts."""
    result = run([BASH, str(ROOT / "eif" / "entrypoint.sh")], {**sandbox, "SEED_STATUS": "1"})
    assert result.returncode == 1
    assert not [c for c in calls(Path(sandbox["STUB_LOG"])) if c.startswith("setpriv")]


# ------------------------------------------------------------------------ seed_entropy


@pytest.fixture(scope="module")
def seed_entropy() -> ModuleType:
    """eif/seed_entropy.py, which the image runs as a script, loaded as a module."""
    spec = importlib.util.spec_from_file_location("seed_entropy", ROOT / "eif" / "seed_entropy.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class ScriptedNsm:
    """An NSM device that answers every request with the next scripted response."""

    def __init__(self, *responses: bytes) -> None:
        self.responses = list(responses)

    def process(self, request: bytes) -> bytes:
        return self.responses.pop(0)


def test_seed_entropy_credits_nsm_bytes_to_the_kernel_pool(seed_entropy: ModuleType) -> None:
    """NSM bytes reach RNDADDENTROPY as struct rand_pool_info, credited 8 bits per byte."""
    chunks = [bytes([n]) * 32 for n in (1, 2)]
    device = ScriptedNsm(*(encode_response(GetRandomResponse(random=c)) for c in chunks))
    ioctls: list[tuple[int, int, bytes]] = []
    fed = seed_entropy.seed(
        NsmClient(device), 7, ioctl=lambda fd, request, arg: ioctls.append((fd, request, arg))
    )
    assert fed == 64
    assert ioctls == [
        (
            7,
            0x40085203,
            (512).to_bytes(4, sys.byteorder) + (64).to_bytes(4, sys.byteorder) + b"".join(chunks),
        )
    ]


def test_seed_entropy_fails_closed(tmp_path: Path, seed_entropy: ModuleType) -> None:
    """An NSM error or a missing device is a non-zero exit, and nothing is credited."""
    ioctls: list[object] = []
    device = ScriptedNsm(encode_response(ErrorResponse(code=ErrorCode.INTERNAL_ERROR)))
    with pytest.raises(NsmError):
        seed_entropy.seed(NsmClient(device), 7, ioctl=lambda *a: ioctls.append(a))
    status = seed_entropy.main(
        ["--device", str(tmp_path / "no-nsm")], ioctl=lambda *a: ioctls.append(a)
    )
    assert status == 1 and ioctls == []


# ------------------------------------------------------------------------ payload


def _copy_sources(destination: Path) -> Path:
    for package in ("enclave", "shared"):
        shutil.copytree(
            ROOT / package, destination / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    return destination


def test_payload_is_byte_identical_across_builds_and_checkouts(tmp_path: Path) -> None:
    """Same sources give the same tar, whatever the checkout's times, modes and clutter."""
    first = build_payload.build_payload(ROOT)
    assert build_payload.build_payload(ROOT).data == first.data
    copy = _copy_sources(tmp_path / "checkout")
    for number, path in enumerate(sorted(copy.rglob("*.py"))):
        os.utime(path, (1_700_000_000 + number, 1_700_000_000 + number))
        path.chmod(0o600 if number % 2 else 0o755)
    (copy / "enclave" / "__pycache__").mkdir()
    (copy / "enclave" / "__pycache__" / "main.cpython-311.pyc").write_bytes(b"junk")
    (copy / "shared" / ".main.py.swp").write_bytes(b"junk")
    (copy / "shared" / "notes.txt").write_text("not code")
    assert build_payload.build_payload(copy).data == first.data


def test_payload_digest_equals_the_simulators_pcr0(tmp_path: Path) -> None:
    """The payload builder's PCR0 is the simulator's PCR0 for this code, and the CLI prints it."""
    output = tmp_path / "payload.tar"
    result = run(
        [sys.executable, "-m", "scripts.build_payload", "--output", str(output)],
        {"PATH": SYSTEM_PATH, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr
    manifest = json.loads(result.stdout)
    assert manifest["simulated_pcr0"] == simulated_pcrs()[0].hex()
    assert manifest["payload_sha256"] == hashlib.sha256(output.read_bytes()).hexdigest()


def test_payload_measurement_changes_with_one_byte_of_code(tmp_path: Path) -> None:
    """Editing the enclave code changes the payload hash and the PCR0 clients pin."""
    copy = _copy_sources(tmp_path / "checkout")
    before = build_payload.build_payload(copy)
    target = copy / "enclave" / "keys.py"
    target.write_bytes(target.read_bytes() + b"\n")
    after = build_payload.build_payload(copy)
    assert after.sha256 != before.sha256
    assert after.simulated_pcr0 != before.simulated_pcr0 == simulated_pcrs()[0]


def test_payload_entries_are_normalised() -> None:
    """Sorted root-owned entries with fixed times and modes; code and package data only."""
    payload = build_payload.build_payload(ROOT)
    with tarfile.open(fileobj=io.BytesIO(payload.data)) as archive:
        members = archive.getmembers()
    names = [m.name for m in members]
    assert names == sorted(names)
    assert {n.split("/")[0] for n in names} == {"enclave", "shared"}
    assert "shared/aws_nitro_root_g1.pem" in names and "enclave/main.py" in names
    for member in members:
        assert (member.uid, member.gid, member.uname, member.gname) == (0, 0, "", "")
        assert member.mtime == build_payload.PAYLOAD_MTIME
        assert member.mode == (0o755 if member.isdir() else 0o644)
        assert member.isdir() or re.search(r"(\.py|\.pem|\.sql|/py\.typed)$", member.name)
        assert "__pycache__" not in member.name


# ------------------------------------------------------------------------ eif/build.sh


@pytest.fixture
def build_env(tmp_path: Path) -> dict[str, str]:
    """Environment for eif/build.sh with stub docker and nitro-cli (unsigned image)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    nitro_stubs(bin_dir, tmp_path, describe_eif())
    return {
        "PATH": f"{bin_dir}:{SYSTEM_PATH}",
        "STUB_LOG": str(tmp_path / "calls.log"),
        "PYTHON": sys.executable,
        "HOME": str(tmp_path),
        "KMS_KEY_ID": "arn:aws:kms:us-east-1:111122223333:key/" + "0" * 36,
    }


@pytest.mark.parametrize("missing", ["docker", "nitro-cli"])
def test_build_sh_fails_loudly_when_a_tool_is_missing(
    tmp_path: Path, build_env: dict[str, str], missing: str
) -> None:
    """No docker or no nitro-cli: exit 1 naming the tool, and nothing built or written."""
    (Path(build_env["PATH"].split(":")[0]) / missing).unlink()
    out = tmp_path / "out"
    result = run(
        [
            BASH,
            str(ROOT / "eif" / "build.sh"),
            "--output-dir",
            str(out),
            "--measurements",
            str(tmp_path / "m.json"),
        ],
        build_env,
    )
    assert result.returncode == 1
    assert f"{missing} not found" in result.stderr
    assert not out.exists() and not (tmp_path / "m.json").exists()
    assert calls(Path(build_env["STUB_LOG"])) == []


@pytest.mark.parametrize(
    ("egress", "message"),
    [
        (
            "AWS_REGION=us-east-1\nEGRESS_ALLOWLIST=api.kraken.com:443\n",
            "must include kms.us-east-1",
        ),
        ("AWS_REGION=us-east-1\nEGRESS_ALLOWLIST=api.kraken.com\n", "bad allowlist entry"),
        ("EGRESS_ALLOWLIST=api.kraken.com:443\n", "sets no AWS_REGION"),
    ],
    ids=["no-kms", "no-port", "no-region"],
)
def test_build_sh_refuses_an_allowlist_the_enclave_cannot_use(
    tmp_path: Path, build_env: dict[str, str], egress: str, message: str
) -> None:
    """An egress file without KMS, with a bad entry or without a region stops before docker."""
    (tmp_path / "egress.env").write_text(egress)
    result = run(
        [
            BASH, str(ROOT / "eif" / "build.sh"), "--output-dir", str(tmp_path / "out"),
            "--egress-env", str(tmp_path / "egress.env"),
        ],
        build_env,
    )  # fmt: skip
    assert result.returncode == 1 and message in result.stderr
    assert not [c for c in calls(Path(build_env["STUB_LOG"])) if "buildx build" in c]


def test_build_sh_records_the_measurements_clients_pin(
    tmp_path: Path, build_env: dict[str, str]
) -> None:
    """Stubbed build: docker gets the staged context, nitro-cli the image, clients read the PCRs."""
    out, pinned = tmp_path / "out", tmp_path / "measurements.json"
    result = run(
        [
            BASH,
            str(ROOT / "eif" / "build.sh"),
            "--output-dir",
            str(out),
            "--measurements",
            str(pinned),
        ],
        build_env,
    )
    assert result.returncode == 0, result.stderr
    assert read_pcrs_file(pinned) == {
        0: bytes.fromhex(PCR0),
        1: bytes.fromhex(PCR1),
        2: bytes.fromhex(PCR2),
    }
    document = json.loads(pinned.read_text())
    assert document["IsSigned"] is False
    assert document["payload"]["simulated_pcr0"] == simulated_pcrs()[0].hex()

    log = calls(Path(build_env["STUB_LOG"]))
    docker_build = next(c for c in log if c.startswith("docker buildx build"))
    egress = env_file(ROOT / "deploy" / "egress.env")
    for expected in (
        f"--build-arg EGRESS_ALLOWLIST={egress['EGRESS_ALLOWLIST']}",
        f"--build-arg AWS_REGION={egress['AWS_REGION']}",
        "--build-arg SOURCE_DATE_EPOCH=315532800",
        "rewrite-timestamp=true",
        f"--file {ROOT / 'eif' / 'Dockerfile'}",
    ):
        assert expected in docker_build
    # The staged context is exactly what the Dockerfile copies from it.
    copied = set()
    for keyword, arguments in dockerfile(ROOT / "eif" / "Dockerfile"):
        if keyword in ("COPY", "ADD") and "--from=" not in arguments:
            copied |= set(arguments.split()[:-1])
    assert set(Path(build_env["STUB_LOG"] + ".context").read_text().split()) == copied
    eif = out / "perf-aggregator.eif"
    assert any(
        c.startswith("nitro-cli build-enclave --docker-uri perf-aggregator-enclave:build")
        and f"--output-file {eif}" in c
        for c in log
    )
    assert f"nitro-cli describe-eif --eif-path {eif} | mode= transport=" in log


def test_build_sh_signed_image_pins_pcr8(tmp_path: Path, build_env: dict[str, str]) -> None:
    """--signing-certificate/--private-key reach nitro-cli and PCR8 lands in the measurements."""
    nitro_stubs(Path(build_env["PATH"].split(":")[0]), tmp_path, describe_eif(signed=True))
    certificate, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    certificate.write_text("certificate")
    key.write_text("key")
    pinned = tmp_path / "measurements.json"
    result = run(
        [
            BASH, str(ROOT / "eif" / "build.sh"), "--output-dir", str(tmp_path / "out"),
            "--measurements", str(pinned), "--signing-certificate", str(certificate),
            "--private-key", str(key),
        ],
        build_env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert read_pcrs_file(pinned)[8] == bytes.fromhex(PCR8)
    build = next(c for c in calls(Path(build_env["STUB_LOG"])) if "build-enclave" in c)
    assert f"--signing-certificate {certificate} --private-key {key}" in build


def test_build_sh_refuses_nitro_cli_answers_that_disagree(
    tmp_path: Path, build_env: dict[str, str]
) -> None:
    """describe-eif and build-enclave reporting different PCRs: exit 1, no measurements file."""
    bin_dir = Path(build_env["PATH"].split(":")[0])
    nitro_stubs(bin_dir, tmp_path, describe_eif())
    write_json(tmp_path / "stub-describe.json", describe_eif(pcr0="ee" * 48))
    pinned = tmp_path / "measurements.json"
    result = run(
        [
            BASH,
            str(ROOT / "eif" / "build.sh"),
            "--output-dir",
            str(tmp_path / "out"),
            "--measurements",
            str(pinned),
        ],
        build_env,
    )
    assert result.returncode == 1
    assert "different PCRs" in result.stderr and not pinned.exists()


# ------------------------------------------------------------------------ measurements


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(CheckCRC=False), "CRC"),
        (lambda d: d["Measurements"].pop("PCR2"), "PCR2 missing"),
        (
            lambda d: d["Measurements"].update(PCR0="00" * 48, PCR1="00" * 48, PCR2="00" * 48),
            "debug-mode",
        ),
        (lambda d: d["Measurements"].update(PCR1="B2" * 48), "lowercase hex"),
        (lambda d: d["Measurements"].update(PCR1="b2" * 32), "SHA-384"),
        (lambda d: d["Measurements"].update(PCR8=PCR8), "PCR8"),
        (lambda d: d["Measurements"].update(HashAlgorithm="Sha256 { ... }"), "Sha384"),
    ],
    ids=["crc", "missing-pcr", "debug-zeros", "uppercase", "short", "pcr8-unsigned", "sha256"],
)
def test_measurements_refuse_unusable_images(
    change: Callable[[dict[str, Any]], object], message: str
) -> None:
    """Failed CRC, missing/short/uppercase PCRs, debug zeros, stray PCR8, wrong hash: refused."""
    describe = describe_eif()
    change(describe)
    with pytest.raises(measurements.MeasurementError, match=message):
        measurements.record(describe, {"Measurements": describe["Measurements"]})


# ------------------------------------------------------------------------ kms-policy


def _policy(*arguments: str) -> subprocess.CompletedProcess[str]:
    return run(
        [BASH, str(ROOT / "scripts" / "kms-policy"), *arguments],
        {"PATH": SYSTEM_PATH, "PYTHON": sys.executable},
    )


def _statement(policy: Mapping[str, Any], sid: str) -> dict[str, Any]:
    statement: dict[str, Any] = next(s for s in policy["Statement"] if s["Sid"] == sid)
    return statement


@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed"])
def test_kms_policy_conditions_equal_the_measurements(tmp_path: Path, signed: bool) -> None:
    """Allow only with ImageSha384 and PCR0/1/2(+8) equal to the file; Deny without attestation."""
    pinned = measurements_file(tmp_path, signed=signed)
    result = _policy("--measurements", str(pinned), "--role-arn", ROLE)
    assert result.returncode == 0, result.stderr
    policy = json.loads(result.stdout)
    expected = {"kms:RecipientAttestation:ImageSha384": read_pcrs_file(pinned)[0].hex()}
    expected |= {
        f"kms:RecipientAttestation:PCR{i}": v.hex() for i, v in read_pcrs_file(pinned).items()
    }
    assert len(expected) == (5 if signed else 4)
    allow = _statement(policy, "EnclaveUseWithAttestation")
    assert allow["Effect"] == "Allow" and allow["Principal"] == {"AWS": ROLE}
    assert allow["Condition"] == {"StringEqualsIgnoreCase": expected}
    absent = _statement(policy, "DenyKeyUseWithoutAttestation")
    assert absent["Effect"] == "Deny" and absent["Principal"] == {"AWS": "*"}
    assert absent["Condition"] == {"Null": {"kms:RecipientAttestation:ImageSha384": "true"}}
    assert "kms:Decrypt" in absent["Action"] and "kms:GenerateDataKey" in absent["Action"]
    other = _statement(policy, "DenyKeyUseByOtherImages")
    assert other["Condition"] == {
        "StringNotEqualsIgnoreCase": {"kms:RecipientAttestation:ImageSha384": PCR0}
    }
    admin = _statement(policy, "KeyAdministration")
    assert admin["Principal"] == {"AWS": "arn:aws:iam::111122223333:root"}
    assert not {"kms:Decrypt", "kms:GenerateDataKey", "kms:CreateGrant"} & set(admin["Action"])


def test_kms_policy_rollover_and_immutable(tmp_path: Path) -> None:
    """Two measurement files allow either image; --immutable withholds PutKeyPolicy."""
    old = measurements_file(tmp_path, name="old.json")
    new_document = measurements.record(
        describe_eif(pcr0="e5" * 48), {"Measurements": describe_eif(pcr0="e5" * 48)["Measurements"]}
    )
    new = write_json(tmp_path / "new.json", new_document)
    result = _policy(
        "--measurements", str(old), "--measurements", str(new), "--role-arn", ROLE, "--immutable"
    )
    assert result.returncode == 0, result.stderr
    policy = json.loads(result.stdout)
    conditions = _statement(policy, "EnclaveUseWithAttestation")["Condition"][
        "StringEqualsIgnoreCase"
    ]
    assert conditions["kms:RecipientAttestation:ImageSha384"] == [PCR0, "e5" * 48]
    assert conditions["kms:RecipientAttestation:PCR1"] == [PCR1]
    assert "kms:PutKeyPolicy" not in _statement(policy, "KeyAdministration")["Action"]


@pytest.mark.parametrize(
    ("setup", "arguments", "message"),
    [
        (None, ["--role-arn", ROLE], "cannot read"),
        ("zeros", ["--role-arn", ROLE], "debug-mode"),
        ("simulator", ["--role-arn", ROLE], "PCR"),
        ("ok", ["--role-arn", "arn:aws:iam::111122223333:user/alice"], "role ARN"),
    ],
    ids=["missing-file", "debug-zeros", "incomplete", "not-a-role"],
)
def test_kms_policy_refuses_what_it_cannot_pin(
    tmp_path: Path, setup: str | None, arguments: list[str], message: str
) -> None:
    """A missing file, debug-mode zeros, too few PCRs or a non-role principal: exit 1."""
    pinned = tmp_path / "m.json"
    if setup == "zeros":
        write_json(pinned, {"Measurements": {f"PCR{i}": "00" * 48 for i in (0, 1, 2)}})
    elif setup == "simulator":
        write_json(pinned, {"0": PCR0})  # a hand-written file pinning PCR0 only
    elif setup == "ok":
        measurements_file(tmp_path)
    result = _policy("--measurements", str(pinned), *arguments)
    assert result.returncode == 1 and result.stdout == ""
    assert message in result.stderr


# ------------------------------------------------------------------------ run-enclave.sh


@pytest.fixture
def run_env(tmp_path: Path) -> dict[str, str]:
    """Stub nitro-cli that describes an image matching the published measurements."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    nitro_stubs(bin_dir, tmp_path, describe_eif())
    (tmp_path / "image.eif").write_bytes(b"EIF")
    measurements_file(tmp_path, name="measurements.json")
    return {
        "PATH": f"{bin_dir}:{SYSTEM_PATH}",
        "STUB_LOG": str(tmp_path / "calls.log"),
        "PYTHON": sys.executable,
    }


def _run_enclave(
    tmp_path: Path, env: dict[str, str], *extra: str
) -> subprocess.CompletedProcess[str]:
    return run(
        [
            BASH, str(ROOT / "scripts" / "run-enclave.sh"), "--eif", str(tmp_path / "image.eif"),
            "--measurements", str(tmp_path / "measurements.json"), *extra,
        ],
        env,
    )  # fmt: skip


def test_run_enclave_checks_measurements_then_starts_in_production(
    tmp_path: Path, run_env: dict[str, str]
) -> None:
    """A matching image starts with the given memory, CPUs and CID, and no debug mode."""
    result = _run_enclave(tmp_path, run_env, "--memory", "6144", "--cpus", "4", "--cid", "20")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["EnclaveName"] == "perf-aggregator"
    log = calls(Path(run_env["STUB_LOG"]))
    assert log[0].startswith("nitro-cli describe-eif --eif-path ")
    assert log[1] == (
        f"nitro-cli run-enclave --eif-path {tmp_path / 'image.eif'} --memory 6144 --cpu-count 4"
        " --enclave-cid 20 --enclave-name perf-aggregator | mode= transport="
    )
    assert "production mode" in result.stderr


def test_run_enclave_refuses_an_image_clients_would_refuse(
    tmp_path: Path, run_env: dict[str, str]
) -> None:
    """PCRs differing from the published file: exit 1 and nitro-cli run-enclave never called."""
    write_json(tmp_path / "stub-describe.json", describe_eif(pcr0="ee" * 48))
    result = _run_enclave(tmp_path, run_env)
    assert result.returncode == 1
    assert "PCR0" in result.stderr and "would refuse" in result.stderr
    assert not [c for c in calls(Path(run_env["STUB_LOG"])) if "run-enclave" in c]


def test_run_enclave_debug_mode_warns_loudly(tmp_path: Path, run_env: dict[str, str]) -> None:
    """--debug passes --debug-mode and warns that clients refuse its attestation."""
    result = _run_enclave(tmp_path, run_env, "--debug")
    assert result.returncode == 0, result.stderr
    assert "WARNING: DEBUG MODE" in result.stderr and "all-zero PCRs" in result.stderr
    assert calls(Path(run_env["STUB_LOG"]))[-1].split(" | ")[0].endswith("--debug-mode")


@pytest.mark.parametrize(
    "bad",
    [["--cid", "3"], ["--memory", "lots"], ["--cpus", "0"], ["--name", "a b"], ["--frobnicate"]],
)
def test_run_enclave_rejects_bad_options(
    tmp_path: Path, run_env: dict[str, str], bad: list[str]
) -> None:
    """Reserved CIDs, non-numbers, zero CPUs, odd names and unknown flags stop before nitro-cli."""
    result = _run_enclave(tmp_path, run_env, *bad)
    assert result.returncode == 1 and result.stderr.startswith("run-enclave:")
    assert calls(Path(run_env["STUB_LOG"])) == []


# ------------------------------------------------------------------------ deploy/


def test_allowlists_agree_across_image_parent_and_vsock_proxy() -> None:
    """egress.env, vsock-proxy.yaml and the shared default plus regional KMS list the same hosts."""
    egress = env_file(ROOT / "deploy" / "egress.env")
    allowlist = Allowlist.parse(egress["EGRESS_ALLOWLIST"])
    assert allowlist.entries == default_allowlist(egress["AWS_REGION"]).entries
    assert sorted(vsock_proxy_allowlist(ROOT / "deploy" / "vsock-proxy.yaml")) == list(
        allowlist.entries
    )
    assert f"kms.{egress['AWS_REGION']}.amazonaws.com:443" in allowlist.entries


def test_parent_environment_passes_production_validation() -> None:
    """egress.env + parent.env.example make a production parent config that finds the enclave."""
    environment = env_file(ROOT / "deploy" / "egress.env") | env_file(
        ROOT / "deploy" / "parent.env.example"
    )
    config = ParentConfig.from_env(environment)
    assert config.mode is ParentMode.PRODUCTION and config.transport == "vsock"
    assert config.egress_allowlist == Allowlist.parse(environment["EGRESS_ALLOWLIST"])
    unit = (ROOT / "deploy" / "systemd" / "perf-aggregator-enclave.service").read_text()
    assert f"--cid {config.enclave_cid} " in unit
    assert config.enclave_rpc_port == EnclaveConfig.from_env({}).rpc_port


def test_systemd_units_start_what_the_repository_ships() -> None:
    """Each ExecStart names a shipped script or module; the parent unit loads both env files."""
    units = {p.name: p.read_text() for p in (ROOT / "deploy" / "systemd").glob("*.service")}
    assert set(units) == {"perf-aggregator-enclave.service", "perf-aggregator-parent.service"}
    for text in units.values():
        assert re.search(r"^\[Unit\]$.*^\[Service\]$.*^\[Install\]$", text, re.M | re.S)
        start = re.search(r"^ExecStart=((?:[^\n]*\\\n)*[^\n]*)", text, re.M)
        assert start is not None
        command = shlex.split(start[1].replace("\\\n", " "))
        local = Path(command[0].replace("/opt/perf-aggregator", str(ROOT)))
        assert local.name in ("run-enclave.sh", "python") and (
            local.exists() or local.name == "python"
        )
        if local.name == "run-enclave.sh":
            flags, _ = _accepted_flags(["scripts/run-enclave.sh"])
            assert {w for w in command if w.startswith("--")} <= flags
    parent = units["perf-aggregator-parent.service"]
    assert parent.index("egress.env") < parent.index("parent.env")
    assert "-m parent run" in parent


# ------------------------------------------------------------------------ docs/deploy.md


def _doc_commands() -> list[list[str]]:
    text = (ROOT / "docs" / "deploy.md").read_text()
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line)
            if words and words[0] == "sudo":
                words = words[1:]
            commands.append(words)
    return commands


def _accepted_flags(words: list[str]) -> tuple[set[str], str]:
    """The flags a project command accepts (from its --help) and the help text."""
    env = {
        "PATH": SYSTEM_PATH,
        "PYTHON": sys.executable,
        "PYTHONPATH": str(ROOT),
        "HOME": "/nonexistent",
    }
    if words[0].startswith(("eif/", "scripts/")):
        help_command = [BASH, str(ROOT / words[0]), "--help"]
    elif words[0] == "perf-agg":
        subcommand = [
            w for w in words[1:] if not w.startswith("-") and "/" not in w and ":" not in w
        ][-1:]
        help_command = [
            sys.executable,
            "-c",
            "from shared.cli import main; main()",
            *subcommand,
            "--help",
        ]
    else:  # .venv/bin/python -m <module>
        module = words[words.index("-m") + 1]
        rest = [w for w in words[words.index("-m") + 2 :] if not w.startswith("-")][:1]
        help_command = [sys.executable, "-m", module, *rest, "--help"]
    result = run(help_command, env)
    assert result.returncode == 0, f"{words[0]} --help failed: {result.stderr}"
    return set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", result.stdout)), result.stdout


def test_deploy_doc_commands_match_the_scripts() -> None:
    """Each project command in docs/deploy.md exists and accepts every flag the doc uses."""
    checked = 0
    makefile = (ROOT / "Makefile").read_text()
    for words in _doc_commands():
        if words[0] == "make":
            assert all(re.search(rf"^{re.escape(t)}:", makefile, re.M) for t in words[1:]), words
            checked += 1
        elif words[0] == ".venv/bin/pytest":
            assert all((ROOT / w).exists() for w in words[1:] if not w.startswith("-"))
        elif words[0].startswith(("eif/", "scripts/", "deploy/")) or words[0] in (
            "perf-agg",
            ".venv/bin/python",
        ):
            if words[0].startswith(("eif/", "scripts/")):
                path = ROOT / words[0]
                assert path.exists() and os.access(path, os.X_OK), (
                    f"{words[0]} missing or not executable"
                )
            flags, _ = _accepted_flags(words)
            used = {w.split("=")[0] for w in words[1:] if w.startswith("--")}
            assert used <= flags, f"{' '.join(words)}: {sorted(used - flags)} not accepted"
            checked += 1
        elif words[:2] == ["docker", "build"]:
            assert (ROOT / words[words.index("-f") + 1]).is_file(), words
        elif words[0] == "install":
            sources = [
                w
                for w in words[1:]
                if not w.startswith("-") and not w.startswith("0") and not w.startswith("/")
            ]
            assert all((ROOT / s).exists() for s in sources), words
    assert checked >= 10
    # Every repository path the guide names exists, except what eif/build.sh produces.
    text = (ROOT / "docs" / "deploy.md").read_text()
    for mentioned in re.findall(r"`((?:eif|scripts|deploy)/[\w./*-]+)`", text):
        if mentioned == "eif/measurements.json" or mentioned.startswith("eif/build/"):
            continue
        assert list(ROOT.glob(mentioned)), f"docs/deploy.md names {mentioned}, which does not exist"


def test_shipped_scripts_are_executable_strict_bash() -> None:
    """Every shell script in eif/ and scripts/ is executable and runs with set -euo pipefail."""
    scripts = [
        ROOT / "eif" / "build.sh",
        ROOT / "eif" / "entrypoint.sh",
        *sorted((ROOT / "scripts").glob("*.sh")),
        ROOT / "scripts" / "kms-policy",
    ]
    for script in scripts:
        text = script.read_text()
        assert text.startswith(("#!/bin/bash\n", "#!/usr/bin/env bash\n")), script
        assert "\nset -euo pipefail\n" in text, script
        assert script.stat().st_mode & stat.S_IXUSR, script
        syntax = run([BASH, "-n", str(script)], {"PATH": SYSTEM_PATH})
        assert syntax.returncode == 0, syntax.stderr
