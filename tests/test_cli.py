"""The ``perf-agg`` CLI in-process: secrets, config precedence, keystore, JSON, exit codes.

``main(argv, env=...)`` runs exactly what the console script runs. The server side is
``FakeParent`` from tests/test_client_sync.py (real HTTPS, real NSM-simulator quotes,
every request logged), so "nothing was sent" is checked on what the server received.
The CLI against the real stack, as a subprocess, is tests/e2e/test_cli_e2e.py.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shared.attestation import pcrs_to_json
from shared.cli import ExitCode, main
from shared.ids import new_session_id
from shared.keystore import KeyStore, KeyStoreError, StoredSession
from tests.support.leakscan import LeakScanner
from tests.test_client_sync import OTHER_PCRS, PCRS, FakeParent, free_port, running_fake_parent

CANARY_KEY = "cli-canary-key-" + secrets.token_hex(8)
CANARY_SECRET = "cli-canary-secret-" + secrets.token_hex(8)
SUBCOMMANDS = ["attest", "register", "status", "aggregates", "summary", "metrics", "revoke"]


@pytest.fixture
def parent(tmp_path: Path) -> Iterator[FakeParent]:
    """A running FakeParent (HTTPS, simulator quotes)."""
    with running_fake_parent(tmp_path / "server") as fake:
        yield fake


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """$PERF_AGG_HOME of the test user (config.toml and sessions/)."""
    return tmp_path / "home"


@pytest.fixture
def env(home: Path) -> dict[str, str]:
    """The environment main() sees: only our variables, keyring off."""
    return {"PERF_AGG_HOME": str(home), "PERF_AGG_KEYRING": "0"}


def pinned(parent: FakeParent) -> list[str]:
    """Flags pinning the fake parent's simulator root, PCRs and TLS CA."""
    return [
        "--url",
        parent.base_url,
        "--pcrs",
        str(parent.pcrs_file),
        "--root",
        str(parent.root_pem),
        "--ca-file",
        str(parent.ca_file),
    ]


def run(
    argv: list[str], env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, str]:
    """main(argv) -> (exit code, stdout, stderr)."""
    code = main(argv, env=env)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def stored_session(name: str = "desk", base_url: str = "https://127.0.0.1:1") -> StoredSession:
    """A session as `register` would store it."""
    return StoredSession(
        name=name,
        base_url=base_url,
        exchange="binance",
        label=name,
        expires_at="2030-01-01T00:00:00Z",
        created_at="2029-12-31T00:00:00Z",
        pcr0=PCRS[0].hex(),
        session_id=new_session_id(),
        owner_key=Ed25519PrivateKey.generate(),
    )


# --------------------------------------------------------------------------- secrets


@pytest.mark.parametrize(
    "argument",
    [
        "--api-secret=hunter2-canary",
        "--api-key",
        "--api_secret",
        "--apiSecret",
        "-Secret",
        "--secret",
        "--passphrase=hunter2-canary",
        "--password",
        "--session-id=hunter2-canary",
    ],
)
def test_secret_arguments_are_refused(
    argument: str,
    parent: FakeParent,
    env: dict[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A secret-looking option exits 1 with advice, never echoes the value, sends nothing."""
    argv = ["register", *pinned(parent), "--exchange", "binance", argument]
    if "=" not in argument:
        argv.append("hunter2-canary")
    code, out, err = run(argv, env, capsys)
    assert code == ExitCode.USAGE == 1
    assert "secrets are never command-line arguments" in err
    assert "PERF_AGG_API_SECRET" in err
    assert "hunter2-canary" not in out + err
    assert parent.requests == []


def test_register_takes_secrets_from_the_environment_and_leaks_none(
    parent: FakeParent,
    env: dict[str, str],
    home: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Env credentials reach the enclave key only: not stdout, stderr or the keystore files."""
    env |= {"PERF_AGG_API_KEY": CANARY_KEY, "PERF_AGG_API_SECRET": CANARY_SECRET}
    argv = ["register", *pinned(parent), "--exchange", "binance", "--label", "desk"]
    code, out, err = run(argv, env, capsys)
    assert code == 0, err
    assert "registered session desk" in out
    code_json, out_json, err_json = run([*argv, "--name", "desk-2", "--json"], env, capsys)
    assert code_json == 0, err_json
    report = json.loads(out_json)
    assert (report["name"], report["exchange"], report["label"]) == ("desk-2", "binance", "desk")
    assert len(parent.opened) == 2  # the fake enclave key opened both envelopes
    scanner = LeakScanner([CANARY_KEY.encode(), CANARY_SECRET.encode()])
    findings = scanner.scan(
        (out + err + out_json + err_json).encode(), label="cli output"
    ) + scanner.scan(home)
    assert findings == [], [str(f) for f in findings]
    assert sorted(p.name for p in (home / "sessions").iterdir()) == ["desk-2.json", "desk.json"]


def test_register_without_a_secret_and_no_terminal_sends_nothing(
    parent: FakeParent, env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """No env secret and stdin not a terminal: exit 1 naming the variable, no request."""
    env |= {"PERF_AGG_API_KEY": CANARY_KEY}
    code, _, err = run(["register", *pinned(parent), "--exchange", "binance"], env, capsys)
    assert code == ExitCode.USAGE
    assert "set PERF_AGG_API_SECRET" in err
    assert parent.requests == []


# --------------------------------------------------------------------------- exit codes


def test_wrong_pcrs_exit_2_before_anything_is_encrypted(
    parent: FakeParent,
    env: dict[str, str],
    home: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Pinned PCRs that differ: exit 2, only the quote was fetched, no session stored."""
    other = tmp_path / "other-pcrs.json"
    other.write_text(json.dumps(pcrs_to_json(OTHER_PCRS)))
    env |= {"PERF_AGG_API_KEY": CANARY_KEY, "PERF_AGG_API_SECRET": CANARY_SECRET}
    argv = ["--json", "register", *pinned(parent), "--pcrs", str(other), "--exchange", "binance"]
    code, out, err = run(argv, env, capsys)
    assert code == ExitCode.ATTESTATION_FAILED == 2
    error = json.loads(out)["error"]
    assert (error["kind"], error["exit_code"]) == ("attestation_failed", 2)
    assert "pcr-mismatch" in error["message"]
    assert "Nothing was encrypted or sent" in err
    assert parent.requests == ["GET /attestation/quote"]
    assert parent.opened == []
    assert not (home / "sessions" / "main.json").exists()


def test_unreachable_server_exits_5(
    env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """Nothing listening on --url: exit 5 with the URL, as text and as --json."""
    pcrs = Path(env["PERF_AGG_HOME"]).parent / "pcrs.json"
    pcrs.write_text(json.dumps(pcrs_to_json(PCRS)))
    url = f"https://127.0.0.1:{free_port()}"
    code, out, err = run(["attest", "--url", url, "--pcrs", str(pcrs), "--json"], env, capsys)
    assert code == ExitCode.UNREACHABLE == 5
    error = json.loads(out)["error"]
    assert error["kind"] == "unreachable"
    assert url in error["message"]
    assert "unreachable" in err


def test_no_pinned_pcrs_is_a_usage_error(
    parent: FakeParent, env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """Without pinned PCRs the CLI refuses to talk to the server at all (fail closed)."""
    code, _, err = run(["attest", "--url", parent.base_url], env, capsys)
    assert code == ExitCode.USAGE
    assert "no pinned PCRs" in err
    assert parent.requests == []


def test_argparse_errors_exit_1_not_2(
    env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """A usage mistake exits 1 (2 means 'attestation failed'), with the usage line."""
    code, _, err = run(["register"], env, capsys)
    assert code == ExitCode.USAGE
    assert "--exchange" in err
    code, _, err = run(["records"], env, capsys)
    assert code == ExitCode.USAGE
    assert "seal, unseal or list" in err


# --------------------------------------------------------------------------- config


def write_config(path: Path, parent: FakeParent, **overrides: Any) -> None:
    """A config.toml pinning the fake parent, with paths relative to the config's directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for source, name in ((parent.pcrs_file, "pcrs.json"), (parent.root_pem, "root.pem")):
        (path.parent / name).write_bytes(source.read_bytes())
    (path.parent / "ca.pem").write_bytes(parent.ca_file.read_bytes())
    values: dict[str, Any] = {
        "url": parent.base_url,
        "pcrs_file": "pcrs.json",
        "root": "root.pem",
        "ca_file": "ca.pem",
    } | overrides
    path.write_text("".join(f"{key} = {json.dumps(value)}\n" for key, value in values.items()))


def test_config_file_in_home_is_used_with_relative_paths(
    parent: FakeParent, env: dict[str, str], home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """$PERF_AGG_HOME/config.toml alone is enough; its paths are relative to itself."""
    write_config(home / "config.toml", parent)
    code, out, err = run(["attest", "--json"], env, capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["verified"] is True
    assert report["pcrs_source"] == str(home / "pcrs.json")
    assert report["pcrs"]["0"] == PCRS[0].hex()


def test_flags_override_the_config_file(
    parent: FakeParent, env: dict[str, str], home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--url beats the config's url: the flag's (dead) server is the one tried."""
    write_config(home / "config.toml", parent)
    dead = f"https://127.0.0.1:{free_port()}"
    code, out, _ = run(["attest", "--json", "--url", dead], env, capsys)
    assert code == ExitCode.UNREACHABLE
    assert dead in json.loads(out)["error"]["message"]
    assert parent.requests == []


def test_config_location_precedence(
    parent: FakeParent,
    env: dict[str, str],
    home: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--config beats $PERF_AGG_CONFIG, which beats $PERF_AGG_HOME/config.toml."""
    dead = f"https://127.0.0.1:{free_port()}"
    write_config(home / "config.toml", parent, url=dead)
    write_config(tmp_path / "env" / "config.toml", parent)
    write_config(tmp_path / "flag" / "config.toml", parent, url=dead)
    env |= {"PERF_AGG_CONFIG": str(tmp_path / "env" / "config.toml")}
    code, _, err = run(["attest"], env, capsys)
    assert code == 0, err
    code, _, _ = run(["attest", "--config", str(tmp_path / "flag" / "config.toml")], env, capsys)
    assert code == ExitCode.UNREACHABLE


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('urll = "https://x"\n', "unknown keys: urll"),
        ("url = [", "not valid TOML"),
        ("timeout = -1\n", "'timeout' must be a positive number"),
        ('pcrs_file = "a.json"\n[pcrs]\n0 = "00"\n', "not both"),
        ('[pcrs]\n0 = "zz"\n', "'pcrs' is invalid"),
    ],
)
def test_bad_config_files_are_refused_by_name(
    content: str,
    message: str,
    env: dict[str, str],
    home: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Typos and bad values in config.toml exit 1 with the file and the problem."""
    home.mkdir(parents=True)
    (home / "config.toml").write_text(content)
    code, _, err = run(["attest"], env, capsys)
    assert code == ExitCode.USAGE
    assert message in err
    assert "config.toml" in err


def test_explicit_config_must_exist(
    env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """A --config that does not exist is an error, not silently ignored."""
    code, _, err = run(["attest", "--config", "/nonexistent/perf-agg.toml"], env, capsys)
    assert code == ExitCode.USAGE
    assert "does not exist" in err


def test_inline_pcrs_and_nitro_cli_measurements_are_accepted(
    parent: FakeParent,
    env: dict[str, str],
    home: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """PCRs pinned inline in config.toml, or from nitro-cli's measurements JSON, both verify."""
    write_config(home / "config.toml", parent)
    text = (home / "config.toml").read_text().replace('pcrs_file = "pcrs.json"\n', "")
    inline = "".join(f'{index} = "{value.hex()}"\n' for index, value in PCRS.items())
    (home / "config.toml").write_text(text + "[pcrs]\n" + inline)
    code, out, err = run(["attest", "--json"], env, capsys)
    assert code == 0, err
    assert json.loads(out)["pinned"] == ["0", "1", "2"]
    measurements = tmp_path / "measurements.json"
    measurements.write_text(
        json.dumps(
            {
                "Measurements": {
                    "HashAlgorithm": "Sha384 { ... }",
                    **{f"PCR{index}": value.hex() for index, value in PCRS.items()},
                }
            }
        )
    )
    code, out, err = run(["attest", "--json", "--pcrs", str(measurements)], env, capsys)
    assert code == 0, err
    assert json.loads(out)["pcrs_source"] == str(measurements)


# --------------------------------------------------------------------------- keystore


def mode(path: Path) -> int:
    """Permission bits of a path."""
    return stat.S_IMODE(path.stat().st_mode)


def test_keystore_writes_0600_files_in_a_0700_directory(tmp_path: Path) -> None:
    """Even with umask 0, the key file is 0600 and its directory 0700; the key round-trips."""
    keystore = KeyStore(tmp_path / "home" / "sessions")
    session = stored_session()
    previous = os.umask(0)
    try:
        path = keystore.save(session)
    finally:
        os.umask(previous)
    assert mode(path) == 0o600
    assert mode(path.parent) == 0o700
    loaded = keystore.load("desk")
    assert loaded.session_id == session.session_id
    assert loaded.owner_key is not None
    assert session.owner_key is not None
    # The stored key signs owner proofs that the registered public key verifies.
    session.owner_key.public_key().verify(loaded.owner_key.sign(b"owner"), b"owner")
    assert session.session_id not in repr(loaded)
    assert list(path.parent.iterdir()) == [path]  # no temporary file left behind


def test_keystore_refuses_a_key_file_others_can_read(
    env: dict[str, str], home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 0644 key file is refused (exit 1, with the fix), as ssh refuses a shared key."""
    path = KeyStore(home / "sessions").save(stored_session())
    path.chmod(0o644)
    code, _, err = run(["status", "--session", "desk"], env, capsys)
    assert code == ExitCode.USAGE
    assert "mode 0644" in err
    assert "chmod 600" in err
    with pytest.raises(KeyStoreError, match="other users could read it"):
        KeyStore(home / "sessions").load("desk")


def test_keystore_refuses_a_shared_directory_and_symlinks(tmp_path: Path) -> None:
    """A group-readable sessions directory and a symlinked key file are refused."""
    keystore = KeyStore(tmp_path / "sessions")
    path = keystore.save(stored_session())
    path.parent.chmod(0o750)
    with pytest.raises(KeyStoreError, match="mode 0750"):
        keystore.load("desk")
    path.parent.chmod(0o700)
    target = tmp_path / "elsewhere.json"
    target.write_bytes(path.read_bytes())
    target.chmod(0o600)
    path.unlink()
    path.symlink_to(target)
    with pytest.raises(KeyStoreError, match="cannot open"):
        keystore.load("desk")


def test_keystore_names_are_checked_and_never_overwritten(tmp_path: Path) -> None:
    """Path-like names are refused; a second session under the same name is refused."""
    keystore = KeyStore(tmp_path / "sessions")
    for bad in ("../escape", "a/b", ".hidden", "", "x" * 65):
        with pytest.raises(KeyStoreError, match="session name"):
            keystore.path(bad)
    keystore.save(stored_session())
    with pytest.raises(KeyStoreError, match="already exists"):
        keystore.save(stored_session())
    assert keystore.names() == ["desk"]
    keystore.delete("desk")
    assert keystore.names() == []


class MemoryKeyring:
    """The three keyring functions over a dict (stands for the OS keyring)."""

    def __init__(self) -> None:
        self.entries: dict[tuple[str, str], str] = {}

    def get_password(self, service_name: str, username: str) -> str | None:
        return self.entries.get((service_name, username))

    def set_password(self, service_name: str, username: str, password: str) -> None:
        self.entries[(service_name, username)] = password

    def delete_password(self, service_name: str, username: str) -> None:
        del self.entries[(service_name, username)]


def test_keystore_with_a_keyring_keeps_secrets_out_of_the_file(tmp_path: Path) -> None:
    """With a keyring, the file has no session id or owner key; load and delete use the keyring."""
    keyring = MemoryKeyring()
    keystore = KeyStore(tmp_path / "sessions", keyring=keyring)
    session = stored_session()
    path = keystore.save(session)
    text = path.read_text()
    assert session.session_id not in text
    assert '"secrets": "keyring"' in text
    assert keystore.load("desk").session_id == session.session_id
    keystore.delete("desk")
    assert keyring.entries == {}


def test_sessions_json_lists_without_secrets(
    env: dict[str, str], home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`sessions --json` parses and shows names, never the session id or the owner key."""
    session = stored_session()
    KeyStore(home / "sessions").save(session)
    code, out, _ = run(["sessions", "--json"], env, capsys)
    assert code == 0
    listing = json.loads(out)
    assert [s["name"] for s in listing["sessions"]] == ["desk"]
    assert listing["sessions"][0]["owner_key"] is True
    assert session.session_id not in out
    assert session.owner_key is not None
    raw = session.owner_key.private_bytes_raw()
    assert LeakScanner([raw]).scan(out.encode()) == []


def test_a_stored_session_is_never_sent_to_another_server(
    env: dict[str, str], home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--url different from the session's own server is refused before any request."""
    KeyStore(home / "sessions").save(stored_session(base_url="https://a.example"))
    code, _, err = run(
        ["status", "--session", "desk", "--url", "https://b.example"],
        env,
        capsys,
    )
    assert code == ExitCode.USAGE
    assert "belongs to https://a.example" in err


def test_a_malformed_session_id_from_the_environment_is_not_echoed(
    env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """$PERF_AGG_SESSION_ID that is not a session id: exit 1, value not printed."""
    env |= {"PERF_AGG_SESSION_ID": "not-a-session-id-canary"}
    code, out, err = run(["summary"], env, capsys)
    assert code == ExitCode.USAGE
    assert "PERF_AGG_SESSION_ID is not a session id" in err
    assert "canary" not in out + err


# --------------------------------------------------------------------------- help


def test_help_documents_exit_codes_and_environment(
    env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """`perf-agg --help` lists every subcommand, the env variables and the exit codes."""
    code, out, _ = run(["--help"], env, capsys)
    assert code == 0
    for word in [*SUBCOMMANDS, "records", "sessions", "PERF_AGG_API_SECRET", "exit codes"]:
        assert word in out
    for line in ("2  attestation failed", "5  server unreachable"):
        assert line in out


@pytest.mark.parametrize(
    "argv",
    [[name, "--help"] for name in [*SUBCOMMANDS, "sessions", "records"]]
    + [["records", action, "--help"] for action in ("seal", "unseal", "list")],
)
def test_every_subcommand_has_help(
    argv: list[str], env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """Each subcommand's --help exits 0 and shows its usage and the common options."""
    code, out, _ = run(argv, env, capsys)
    assert code == 0
    assert out.startswith("usage: perf-agg")
    if argv[0] != "records" or len(argv) == 3:
        assert "--json" in out


def test_verify_refuses_to_run_without_your_own_pcrs(
    env: dict[str, str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """verify never takes the PCRs from the bundle: without --pcrs it exits 1 and says why."""
    bundle = tmp_path / "bundle.json"
    bundle.write_text("{}")
    code, out, err = run(["verify", str(bundle)], env, capsys)
    assert code == 1 and out == ""
    assert "never the ones inside the bundle" in err


def test_verify_reports_bad_files_and_times(
    env: dict[str, str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A missing or non-JSON bundle and a bad --at are usage errors; a non-bundle fails (4)."""
    pcrs = tmp_path / "pcrs.json"
    pcrs.write_text(json.dumps({"0": "11" * 48, "1": "22" * 48, "2": "33" * 48}))
    flags = ["--pcrs", str(pcrs), "--json"]
    assert run(["verify", str(tmp_path / "absent.json"), *flags], env, capsys)[0] == 1
    (tmp_path / "text.json").write_text("not json")
    assert run(["verify", str(tmp_path / "text.json"), *flags], env, capsys)[0] == 1
    (tmp_path / "other.json").write_text(json.dumps({"format": "zip"}))
    code, out, _ = run(["verify", str(tmp_path / "other.json"), *flags], env, capsys)
    assert code == 4 and json.loads(out)["reason"].startswith("format")
    code, _, err = run(
        ["verify", str(tmp_path / "other.json"), *flags, "--at", "noon"], env, capsys
    )
    assert code == 1 and "ISO 8601" in err


def test_keystore_keeps_the_newest_verified_reports_privately(tmp_path: Path) -> None:
    """Reports kept for export: 0600, one per seq, newest kept when the file is full,
    not listed as a session, deleted with the session."""
    keystore = KeyStore(tmp_path / "home" / "sessions")
    keystore.save(stored_session())
    for seq in (2, 1, 2):
        keystore.add_report("desk", {"seq": seq, "pnl": "1", "pad": "x" * 3000}, f"sig{seq}")
    kept = keystore.reports("desk")
    assert [r["payload"]["seq"] for r in kept] == [1, 2]
    path = keystore.directory / "desk.reports"
    assert path.stat().st_mode & 0o777 == 0o600
    assert keystore.names() == ["desk"]
    for seq in range(3, 60):
        keystore.add_report("desk", {"seq": seq, "pad": "x" * 3000}, f"sig{seq}")
    kept = keystore.reports("desk")
    assert kept[-1]["payload"]["seq"] == 59 and len(kept) < 30
    assert [r["payload"]["seq"] for r in kept] == list(range(60 - len(kept), 60))
    keystore.delete("desk")
    assert not path.exists()
