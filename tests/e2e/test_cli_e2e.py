"""End to end: the ``perf-agg`` console script and SyncSecureClient against the local stack.

Real processes throughout: fake exchanges, the simulated enclave, the parent over HTTPS
with its embedded PostgreSQL, and ``perf-agg`` run as a subprocess the way a user runs
it, configured by a config.toml and environment variables only (secrets never in argv).
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from parent.db.embedded import EmbeddedPostgres
from scripts.localstack import LocalStack
from shared.attestation import pcrs_to_json
from shared.client import AttestationFailed, ServerRejected, SyncSecureClient
from tests.e2e.conftest import running_stack
from tests.support.leakscan import LeakScanner

pytestmark = pytest.mark.e2e

CANARY_KEY = "cli-e2e-canary-key-" + secrets.token_hex(6)
CANARY_SECRET = "cli-e2e-canary-secret-" + secrets.token_hex(6)
_SCRIPT = Path(sys.executable).with_name("perf-agg")
# The installed console script, as a user runs it (python -m shared.cli if not installed).
PERF_AGG = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "shared.cli"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """One local stack for the module."""
    yield from running_stack(tmp_path_factory, "cli-stack")


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, stack: LocalStack) -> Path:
    """$PERF_AGG_HOME with a config.toml pinning the stack's root, PCRs and TLS CA."""
    home = tmp_path_factory.mktemp("perf-agg-home")
    (home / "config.toml").write_text(
        f'url = "{stack.base_url}"\n'
        f'pcrs_file = "{stack.pcrs_file}"\n'
        f'root = "{stack.nsm_root_file}"\n'
        f'ca_file = "{stack.ca_file}"\n'
    )
    return home


def perf_agg(
    home: Path, *args: str, env: dict[str, str] | None = None, stdin: bytes = b""
) -> subprocess.CompletedProcess[bytes]:
    """Run the CLI with a clean environment (PATH, HOME, PERF_AGG_HOME, keyring off)."""
    environment = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(home),
        "PERF_AGG_HOME": str(home),
        "PERF_AGG_KEYRING": "0",
        **(env or {}),
    }
    return subprocess.run(
        [*PERF_AGG, *args],
        input=stdin,
        capture_output=True,
        env=environment,
        timeout=120,
        check=False,
    )


def json_of(result: subprocess.CompletedProcess[bytes]) -> Any:
    """stdout as JSON (and nothing else on it), with stderr in the failure message."""
    assert result.returncode == 0, result.stderr.decode()
    return json.loads(result.stdout)


def credentials(stack: LocalStack, exchange: str) -> dict[str, str]:
    """The env variables carrying the fake exchange's accepted API keys."""
    keys = stack.fakes_info()["exchanges"][exchange]["credentials"]
    return {"PERF_AGG_API_KEY": keys["api_key"], "PERF_AGG_API_SECRET": keys["api_secret"]}


def session_count(stack: LocalStack) -> int:
    """Rows in the sessions table (the test plays the DBA)."""
    with psycopg.connect(EmbeddedPostgres(stack.state_dir).admin_conninfo()) as conn:
        row = conn.execute("SELECT count(*) FROM sessions").fetchone()
    assert row is not None
    return int(row[0])


def stored(home: Path, name: str) -> dict[str, Any]:
    """The keystore file of a session (the test reads it like an attacker with the disk)."""
    document: dict[str, Any] = json.loads((home / "sessions" / f"{name}.json").read_text())
    return document


def test_register_wait_report_records_revoke(stack: LocalStack, home: Path) -> None:
    """A user's journey: register from env and wait, verified report, records, revoke."""
    truth = stack.truth("coinbase")
    registered = json_of(
        perf_agg(
            home,
            "register",
            "--exchange",
            "coinbase",
            "--label",
            "journey",
            "--wait",
            "--json",
            env=credentials(stack, "coinbase"),
        )
    )
    assert registered["polling"]["complete"] is True
    assert registered["polling"]["trades_seen"] == len(truth)
    assert registered["pcr0"] == stack.expected_pcrs()[0].hex()

    report = json_of(perf_agg(home, "status", "--session", "journey", "--json"))
    assert report["verified"] is True
    assert report["payload"]["trades"] == len(truth)
    assert report["payload"]["seq"] == 1
    assert stored(home, "journey")["last_seq"] == 1
    human = perf_agg(home, "aggregates", "--session", "journey")
    assert human.returncode == 0, human.stderr.decode()
    assert b"signature verified" in human.stdout
    assert stored(home, "journey")["last_report_hash"] is not None
    assert stored(home, "journey")["last_seq"] == 2

    summary = json_of(perf_agg(home, "summary", "--session", "journey", "--json"))
    assert summary["polling"]["complete"] is True
    metrics = json_of(perf_agg(home, "metrics", "--session", "journey", "--json"))
    assert metrics["totals"]["trades"] == len(truth)

    note = b"record-" + secrets.token_hex(8).encode()
    sealed = json_of(
        perf_agg(
            home,
            "records",
            "seal",
            "--session",
            "journey",
            "--label",
            "notes",
            "--json",
            stdin=note,
        )
    )
    listing = json_of(perf_agg(home, "records", "list", "--session", "journey", "--json"))
    assert [r["id"] for r in listing["records"]] == [sealed["id"]]
    output = home / "unsealed.bin"
    unsealed = perf_agg(
        home, "records", "unseal", sealed["id"], "--session", "journey", "--output", str(output)
    )
    assert unsealed.returncode == 0, unsealed.stderr.decode()
    assert output.read_bytes() == note
    assert output.stat().st_mode & 0o777 == 0o600

    session_id = stored(home, "journey")["session_id"]
    revoked = json_of(perf_agg(home, "revoke", "--session", "journey", "--yes", "--json"))
    assert revoked["revoked"] is True
    assert not (home / "sessions" / "journey.json").exists()
    after = perf_agg(home, "status", "--json", env={"PERF_AGG_SESSION_ID": session_id})
    assert after.returncode == 3
    assert "404" in json.loads(after.stdout)["error"]["message"]


def test_the_api_secret_appears_nowhere(stack: LocalStack, home: Path) -> None:
    """The secret from the env reaches no argv, output or file; the refusal exits 3."""
    before = {p.name for p in home.rglob("*")}
    env = {"PERF_AGG_API_KEY": CANARY_KEY, "PERF_AGG_API_SECRET": CANARY_SECRET}
    argv = ["register", "--exchange", "binance", "--label", "canary", "--wait"]
    result = perf_agg(home, *argv, env=env)
    # The fake Binance refuses unknown keys: the enclave stops polling and says why.
    assert result.returncode == 3, result.stderr.decode()
    assert b"exchange refused" in result.stderr
    assert b"--session canary" in result.stderr
    listed = perf_agg(home, "sessions", "--json")
    scanner = LeakScanner([CANARY_KEY.encode(), CANARY_SECRET.encode()])
    findings = (
        scanner.scan(" ".join([*PERF_AGG, *argv]).encode(), label="argv")
        + scanner.scan(result.stdout + result.stderr, label="register output")
        + scanner.scan(listed.stdout + listed.stderr, label="sessions output")
        + scanner.scan(home)
    )
    assert findings == [], [str(f) for f in findings]
    assert {p.name for p in home.rglob("*")} - before == {"canary.json"}
    assert perf_agg(home, "revoke", "--session", "canary", "--yes").returncode == 0


def test_wrong_pcrs_store_nothing_anywhere(stack: LocalStack, home: Path, tmp_path: Path) -> None:
    """Pinned PCRs that differ: exit 2, no session on the server, nothing in the keystore."""
    wrong = {index: bytes(48 - 1) + b"\x01" for index in (0, 1, 2)}
    pcrs = tmp_path / "wrong-pcrs.json"
    pcrs.write_text(json.dumps(pcrs_to_json(wrong)))
    before = session_count(stack)
    result = perf_agg(
        home,
        "register",
        "--exchange",
        "coinbase",
        "--label",
        "wrong",
        "--pcrs",
        str(pcrs),
        env=credentials(stack, "coinbase"),
    )
    assert result.returncode == 2
    assert b"pcr-mismatch" in result.stderr
    assert session_count(stack) == before
    assert not (home / "sessions" / "wrong.json").exists()


def test_a_replayed_report_is_refused(stack: LocalStack, home: Path) -> None:
    """A report no newer than the last one verified here fails verification (exit 4)."""
    assert (
        perf_agg(
            home,
            "register",
            "--exchange",
            "coinbase",
            "--label",
            "replay",
            env=credentials(stack, "coinbase"),
        ).returncode
        == 0
    )
    assert perf_agg(home, "status", "--session", "replay").returncode == 0
    path = home / "sessions" / "replay.json"
    document = json.loads(path.read_text())
    document["last_seq"] = 99  # as if this machine had already seen report 99
    path.write_text(json.dumps(document))
    result = perf_agg(home, "status", "--session", "replay", "--json")
    assert result.returncode == 4
    assert "not newer" in json.loads(result.stdout)["error"]["message"]
    assert perf_agg(home, "revoke", "--session", "replay", "--yes").returncode == 0


def test_wait_gives_up_with_exit_6(stack: LocalStack, home: Path) -> None:
    """--wait-timeout shorter than the first poll: exit 6, and the session stays usable."""
    result = perf_agg(
        home,
        "register",
        "--exchange",
        "binance",
        "--label",
        "slow",
        "--wait",
        "--wait-timeout",
        "0.5",
        env=credentials(stack, "binance"),
    )
    assert result.returncode == 6, result.stderr.decode()
    assert b"summary --session slow" in result.stderr
    assert perf_agg(home, "summary", "--session", "slow").returncode == 0
    assert perf_agg(home, "revoke", "--session", "slow", "--yes").returncode == 0


def test_an_untrusted_server_certificate_exits_5(stack: LocalStack, home: Path) -> None:
    """Without the stack's CA the TLS handshake fails: exit 5, with the --ca-file hint."""
    config = home / "no-ca.toml"
    text = (home / "config.toml").read_text()
    kept = [line for line in text.splitlines() if not line.startswith("ca_file")]
    config.write_text("\n".join(kept) + "\n")
    result = perf_agg(home, "attest", "--config", str(config))
    assert result.returncode == 5
    assert b"not trusted" in result.stderr


def test_sync_sdk_every_method(stack: LocalStack) -> None:
    """SyncSecureClient against the real stack: every method, then 404 after revoke."""
    fake = stack.fakes_info()["exchanges"]["coinbase"]["credentials"]
    with SyncSecureClient(
        stack.base_url,
        expected_pcrs=stack.expected_pcrs(),
        root=stack.nsm_root_file,
        ca_file=stack.ca_file,
    ) as client:
        assert client.attest().pcr0 == stack.expected_pcrs()[0].hex()
        registration = client.register(
            exchange="coinbase", api_key=fake["api_key"], api_secret=fake["api_secret"]
        )
        report = client.aggregates(registration.session_id)
        assert report.payload["seq"] == 1
        assert client.summary(registration.session_id)["status"] == "active"
        assert client.metrics(registration.session_id)["exchange"] == "coinbase"
        info = client.seal_record(registration, b"sdk record", label="sdk")
        assert [r.id for r in client.list_records(registration.session_id)] == [info.id]
        assert client.unseal_record(registration, info.id).data == b"sdk record"
        assert client.revoke(registration)["success"] is True
        with pytest.raises(ServerRejected) as refused:
            client.aggregates(registration.session_id)
        assert refused.value.status == 404


def test_sync_sdk_refuses_other_pcrs_before_sending(stack: LocalStack) -> None:
    """SDK pinned to other PCRs: AttestationFailed, and the server stores no session."""
    before = session_count(stack)
    other = {0: bytes(range(48))}
    with (
        SyncSecureClient(
            stack.base_url, expected_pcrs=other, root=stack.nsm_root_file, ca_file=stack.ca_file
        ) as client,
        pytest.raises(AttestationFailed) as info,
    ):
        client.register(exchange="binance", api_key=CANARY_KEY, api_secret=CANARY_SECRET)
    assert info.value.reason == "pcr-mismatch"
    assert session_count(stack) == before


def test_console_script_is_installed() -> None:
    """`perf-agg` is on the venv's PATH (pyproject's [project.scripts])."""
    assert shutil.which("perf-agg", path=str(Path(sys.executable).parent)) is not None


def test_logs_disclose_export_and_offline_verify(
    stack: LocalStack, home: Path, tmp_path: Path
) -> None:
    """A trader's proof: verified log, a disclosed trade, a bundle that verifies offline."""
    json_of(
        perf_agg(
            home, "register", "--exchange", "coinbase", "--label", "proof", "--wait", "--json",
            env=credentials(stack, "coinbase"),
        )
    )  # fmt: skip
    log = json_of(perf_agg(home, "logs", "--session", "proof", "--json"))
    assert log["verified"] is True and log["consistent_with_previous"] is False
    assert log["entries"][0]["op"] == "submit"
    assert stored(home, "proof")["log_head"]["tree_size"] == len(log["entries"])
    again = json_of(perf_agg(home, "logs", "--session", "proof", "--json"))
    assert again["consistent_with_previous"] is True  # the stored head was extended

    for seq in (1, 2):  # verified reports are kept for the bundle's chain
        assert (
            json_of(perf_agg(home, "status", "--session", "proof", "--json"))["payload"]["seq"]
            == seq
        )
    symbol, trade_id = sorted(stack.truth("coinbase"))[0]
    disclosed = json_of(
        perf_agg(home, "disclose", f"{symbol}:{trade_id}", "--session", "proof", "--json")
    )
    assert disclosed["verified"] is True
    assert (disclosed["trade"]["symbol"], disclosed["trade"]["id"]) == (symbol, trade_id)

    bundle_path = tmp_path / "bundle.json"
    exported = json_of(
        perf_agg(home, "export", "--session", "proof", "--output", str(bundle_path),
                 "--disclose", f"{symbol}:{trade_id}", "--json")
    )  # fmt: skip
    assert exported["verdict"]["ok"] is True
    assert [r["payload"]["seq"] for r in json.loads(bundle_path.read_text())["reports"]] == [
        1,
        2,
        3,
        4,
    ]
    assert bundle_path.stat().st_mode & 0o777 == 0o600
    # The reader has only the file, the published PCRs and the root: no server, no keystore.
    reader = tmp_path / "reader"
    reader.mkdir()
    offline = [
        "verify", str(bundle_path), "--pcrs", str(stack.pcrs_file),
        "--root", str(stack.nsm_root_file), "--json",
    ]  # fmt: skip
    verdict = json_of(perf_agg(reader, *offline))
    assert verdict["ok"] is True and verdict["report"]["trades"] == len(stack.truth("coinbase"))
    assert {c["name"] for c in verdict["checks"]} >= {"attestation", "signature", "log"}
    human = perf_agg(reader, *offline[:-1])
    assert human.returncode == 0 and b"VERIFIED" in human.stdout

    # Tampered copies fail with exit 4 and name the check.
    bundle = json.loads(bundle_path.read_text())
    document = bytearray(base64.b64decode(bundle["attestation"]["document"]))
    document[-5] ^= 1
    variants = {
        "attestation": lambda b: b["attestation"].__setitem__(
            "document", base64.b64encode(bytes(document)).decode()
        ),
        "chain": lambda b: b["reports"].pop(1),
        "signature": lambda b: b["reports"][0]["payload"].__setitem__("pnl", "99999"),
        "disclosures": lambda b: b["disclosures"][0]["fields"].__setitem__("price", "1"),
        "log": lambda b: b["log"]["entries"].pop(),
    }
    for name, mutate in variants.items():
        forged = json.loads(json.dumps(bundle))
        mutate(forged)
        path = tmp_path / f"forged-{name}.json"
        path.write_text(json.dumps(forged))
        result = perf_agg(reader, "verify", str(path), *offline[2:])
        assert result.returncode == 4, (name, result.stderr.decode())
        assert json.loads(result.stdout)["reason"].startswith(name)
    other_pcrs = tmp_path / "other-pcrs.json"
    other_pcrs.write_text(json.dumps({"0": "00" * 48, "1": "00" * 48, "2": "11" * 48}))
    result = perf_agg(reader, "verify", str(bundle_path), "--pcrs", str(other_pcrs),
                      "--root", str(stack.nsm_root_file), "--json")  # fmt: skip
    assert result.returncode == 4 and "pcr-mismatch" in json.loads(result.stdout)["reason"]
