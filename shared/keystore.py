"""Local storage of a trader's sessions: owner key and session id. Side: client.

``perf-agg register`` creates an Ed25519 owner key whose public half travels inside the
credential envelope; the private half signs owner operations (revoke, unseal) and
must stay on the trader's machine. The session id is a bearer secret too. Both are kept
under a local *name*, so neither is ever typed on a command line.

Layout: ``<home>/sessions/<name>.json``, home being ``$PERF_AGG_HOME``, else
``$XDG_CONFIG_HOME/perf-agg``, else ``~/.config/perf-agg``. Files are written atomically
with mode 0600 in a directory with mode 0700. A file or directory that other users can
read, that another user owns, or that is a symbolic link is refused, as OpenSSH refuses
a world-readable private key: a key someone else could read is not the owner's alone.

When the ``keyring`` package is importable and has a usable backend, the two secrets go
to the OS keyring instead and the file keeps only public metadata (it is 0600 anyway).
``keyring`` is optional and not a dependency; ``PERF_AGG_KEYRING=0`` turns it off.

Nothing here talks to the network; nothing here is sent to the parent.

Errors: :class:`KeyStoreError` (a ``ClientError``); messages name files, never contents.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import re
import secrets
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shared.client import ClientError, Registration
from shared.encoding import b64decode, b64encode
from shared.ids import is_session_id

__all__ = [
    "FORMAT_VERSION",
    "KEYRING_SERVICE",
    "MAX_KEPT_REPORTS",
    "KeyStore",
    "KeyStoreError",
    "KeyringBackend",
    "StoredSession",
    "default_home",
    "default_keyring",
]

FORMAT_VERSION: Final = 1
KEYRING_SERVICE: Final = "perf-agg"

_NAME: Final = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
_MAX_FILE_BYTES: Final = 64 * 1024
MAX_KEPT_REPORTS: Final = 30
_PRIVATE_FILE: Final = 0o600
_PRIVATE_DIR: Final = 0o700
_PUBLIC_FIELDS: Final = (
    "name",
    "base_url",
    "exchange",
    "label",
    "expires_at",
    "created_at",
    "pcr0",
    "last_seq",
    "last_report_hash",
    "log_head",
)


class KeyStoreError(ClientError):
    """The keystore refused or failed an operation (bad name, permissions, missing file)."""


class KeyringBackend(Protocol):
    """The three functions of the ``keyring`` package that the keystore uses."""

    def get_password(self, service_name: str, username: str) -> str | None: ...

    def set_password(self, service_name: str, username: str, password: str) -> None: ...

    def delete_password(self, service_name: str, username: str) -> None: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredSession:
    """One registered session as kept on this machine.

    ``session_id`` and ``owner_key`` are secrets (hidden from repr). ``last_seq`` and
    ``last_report_hash`` remember the newest verified report, so that a later report that
    goes backwards or does not chain to it is noticed.
    """

    name: str
    base_url: str
    exchange: str
    label: str
    expires_at: str
    created_at: str
    pcr0: str
    session_id: str = field(repr=False)
    owner_key: Ed25519PrivateKey | None = field(default=None, repr=False)
    last_seq: int | None = None
    last_report_hash: str | None = None
    # The newest verified transparency-log tree head (payload): later logs must extend it.
    log_head: dict[str, Any] | None = None

    def registration(self) -> Registration:
        """The SDK's view of this session (for revoke and records)."""
        return Registration(
            session_id=self.session_id, expires_at=self.expires_at, owner_key=self.owner_key
        )

    def public(self) -> dict[str, Any]:
        """Everything but the secrets, JSON-ready (what ``perf-agg sessions`` shows)."""
        fields: dict[str, Any] = {name: getattr(self, name) for name in _PUBLIC_FIELDS}
        fields["owner_key"] = self.owner_key is not None
        return fields


def default_home(env: Mapping[str, str] | None = None) -> Path:
    """``$PERF_AGG_HOME``, else ``$XDG_CONFIG_HOME/perf-agg``, else ``~/.config/perf-agg``."""
    env = os.environ if env is None else env
    if env.get("PERF_AGG_HOME"):
        return Path(env["PERF_AGG_HOME"]).expanduser()
    if env.get("XDG_CONFIG_HOME"):
        return Path(env["XDG_CONFIG_HOME"]).expanduser() / "perf-agg"
    return Path.home() / ".config" / "perf-agg"


def default_keyring(env: Mapping[str, str] | None = None) -> KeyringBackend | None:
    """The ``keyring`` package if importable with a real backend (``PERF_AGG_KEYRING=0``: off)."""
    env = os.environ if env is None else env
    if env.get("PERF_AGG_KEYRING", "1") == "0":
        return None
    try:
        module: Any = importlib.import_module("keyring")
        backend = module.get_keyring()
    except Exception:  # noqa: BLE001 - any failure of an optional package means "not available"
        return None
    # keyring's "fail" and "null" backends store nothing: fall back to the file.
    if type(backend).__module__.startswith(("keyring.backends.fail", "keyring.backends.null")):
        return None
    result: KeyringBackend = module
    return result


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise KeyStoreError(
            "a session name is 1..64 characters: letters, digits, '.', '_', '-' "
            "(starting with a letter or digit)"
        )
    return name


def _refuse_shared(path: Path, st: os.stat_result, *, kind: str, wanted: int) -> None:
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        raise KeyStoreError(f"{kind} {path} belongs to another user; refusing to use it")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise KeyStoreError(
            f"{kind} {path} has mode {mode:04o}: other users could read it; "
            f"run `chmod {wanted:o} {path}` if you are sure nobody else did"
        )


class KeyStore:
    """Sessions by name in one directory (see the module docstring for the protections)."""

    def __init__(self, directory: Path, *, keyring: KeyringBackend | None = None) -> None:
        self._directory = Path(directory)
        self._keyring = keyring

    @classmethod
    def default(cls, env: Mapping[str, str] | None = None) -> KeyStore:
        """The user's keystore: ``default_home(env)/sessions``, keyring when available."""
        return cls(default_home(env) / "sessions", keyring=default_keyring(env))

    @property
    def directory(self) -> Path:
        """Where the session files live."""
        return self._directory

    def path(self, name: str) -> Path:
        """The file of session ``name``."""
        return self._directory / f"{_check_name(name)}.json"

    # ------------------------------------------------------------------ directory

    def _checked_directory(self, *, create: bool) -> bool:
        """True when the directory exists and is private; create it (0700) if asked."""
        if create:
            # The parent too: ~/.config/perf-agg holds the config, nothing secret.
            self._directory.parent.mkdir(mode=_PRIVATE_DIR, parents=True, exist_ok=True)
            with contextlib.suppress(FileExistsError):
                self._directory.mkdir(mode=_PRIVATE_DIR)
                # mkdir's mode is filtered by the umask, which can only remove bits.
                os.chmod(self._directory, _PRIVATE_DIR)
        try:
            st = os.lstat(self._directory)
        except FileNotFoundError:
            return False
        if not stat.S_ISDIR(st.st_mode):
            raise KeyStoreError(f"{self._directory} is not a directory (or is a symbolic link)")
        _refuse_shared(self._directory, st, kind="directory", wanted=_PRIVATE_DIR)
        return True

    def ensure_writable(self, name: str) -> Path:
        """Create the directory if needed and check ``name`` is free; return its path.

        Call before registering, so that a keystore problem shows before anything is sent.
        """
        path = self.path(name)
        self._checked_directory(create=True)
        if os.path.lexists(path):
            raise KeyStoreError(
                f"a session named {name!r} already exists ({path}); "
                "pick another name or revoke/forget that one first"
            )
        return path

    # ------------------------------------------------------------------ files

    def _read(self, path: Path) -> dict[str, Any]:
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(path, flags)
        except FileNotFoundError:
            raise KeyStoreError(f"no session named {path.stem!r} in {path.parent}") from None
        except OSError as exc:
            raise KeyStoreError(f"cannot open {path}: {exc.strerror}") from None
        with os.fdopen(fd, "rb") as file:
            # Checked on the open descriptor, so the file cannot be swapped in between.
            st = os.fstat(file.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise KeyStoreError(f"{path} is not a regular file")
            _refuse_shared(path, st, kind="key file", wanted=_PRIVATE_FILE)
            data = file.read(_MAX_FILE_BYTES + 1)
        if len(data) > _MAX_FILE_BYTES:
            raise KeyStoreError(f"{path} is too large to be a session file")
        try:
            document = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise KeyStoreError(f"{path} is not a session file (invalid JSON)") from None
        if not isinstance(document, dict) or document.get("v") != FORMAT_VERSION:
            raise KeyStoreError(f"{path} is not a version {FORMAT_VERSION} session file")
        return document

    def _write(self, path: Path, document: Mapping[str, Any], *, replace_existing: bool) -> None:
        data = json.dumps(document, indent=2, sort_keys=True).encode("utf-8") + b"\n"
        temporary = path.with_name(f".{path.stem}.{secrets.token_hex(8)}.tmp")
        flags = (
            os.O_WRONLY
            | os.O_CREAT
            | os.O_EXCL
            | getattr(os, "O_NOFOLLOW", 0)
            | getattr(os, "O_CLOEXEC", 0)
        )
        fd = os.open(temporary, flags, _PRIVATE_FILE)
        try:
            with os.fdopen(fd, "wb") as file:
                os.fchmod(file.fileno(), _PRIVATE_FILE)
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            if replace_existing:
                os.replace(temporary, path)
            else:
                # link() fails if the name exists: two concurrent registrations cannot
                # overwrite each other's owner key.
                try:
                    os.link(temporary, path)
                except FileExistsError:
                    raise KeyStoreError(f"a session named {path.stem!r} already exists") from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
        self._sync_directory()

    def _sync_directory(self) -> None:
        with contextlib.suppress(OSError):
            fd = os.open(self._directory, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def _keyring_user(self, name: str) -> str:
        return f"{self._directory}/{name}"

    # ------------------------------------------------------------------ sessions

    def save(self, session: StoredSession) -> Path:
        """Store a new session under ``session.name``; refuse to overwrite an existing one."""
        path = self.ensure_writable(session.name)
        self._write(path, self._document(session), replace_existing=False)
        return path

    def update(self, session: StoredSession) -> Path:
        """Rewrite an existing session (after a newer report was verified)."""
        path = self.path(session.name)
        if not self._checked_directory(create=False) or not os.path.lexists(path):
            raise KeyStoreError(f"no session named {session.name!r} in {self._directory}")
        self._write(path, self._document(session), replace_existing=True)
        return path

    def _document(self, session: StoredSession) -> dict[str, Any]:
        _check_name(session.name)
        if not is_session_id(session.session_id):
            raise KeyStoreError("refusing to store something that is not a session id")
        secrets_part: dict[str, Any] = {
            "session_id": session.session_id,
            "owner_key": None
            if session.owner_key is None
            else b64encode(session.owner_key.private_bytes_raw()),
        }
        document: dict[str, Any] = {"v": FORMAT_VERSION}
        document |= {name: getattr(session, name) for name in _PUBLIC_FIELDS}
        if self._keyring is not None:
            self._keyring.set_password(
                KEYRING_SERVICE, self._keyring_user(session.name), json.dumps(secrets_part)
            )
            document["secrets"] = "keyring"
        else:
            document |= secrets_part
        return document

    def load(self, name: str) -> StoredSession:
        """The session stored under ``name`` (permissions checked before reading)."""
        path = self.path(name)
        if not self._checked_directory(create=False):
            raise KeyStoreError(f"no session named {name!r}: {self._directory} does not exist")
        document = self._read(path)
        if document.get("secrets") == "keyring":
            if self._keyring is None:
                raise KeyStoreError(
                    f"session {name!r} keeps its secrets in the OS keyring, which is unavailable"
                )
            stored = self._keyring.get_password(KEYRING_SERVICE, self._keyring_user(name))
            if stored is None:
                raise KeyStoreError(f"the OS keyring has no secrets for session {name!r}")
            try:
                secret_part = json.loads(stored)
            except ValueError:
                raise KeyStoreError(f"the keyring entry of session {name!r} is corrupt") from None
        else:
            secret_part = document
        return self._session(path, name, document, secret_part)

    @staticmethod
    def _session(
        path: Path, name: str, document: Mapping[str, Any], secret_part: Any
    ) -> StoredSession:
        try:
            session_id = secret_part["session_id"]
            raw_owner = secret_part["owner_key"]
            owner_key = (
                None
                if raw_owner is None
                else Ed25519PrivateKey.from_private_bytes(b64decode(raw_owner, max_len=32))
            )
            session = StoredSession(
                name=name,
                base_url=str(document["base_url"]),
                exchange=str(document["exchange"]),
                label=str(document["label"]),
                expires_at=str(document["expires_at"]),
                created_at=str(document["created_at"]),
                pcr0=str(document["pcr0"]),
                session_id=session_id,
                owner_key=owner_key,
                last_seq=document.get("last_seq"),
                last_report_hash=document.get("last_report_hash"),
                log_head=document.get("log_head"),
            )
        except (KeyError, TypeError, ValueError):
            raise KeyStoreError(f"{path} is not a valid session file") from None
        if not is_session_id(session.session_id) or document.get("name") != name:
            raise KeyStoreError(f"{path} is not a valid session file")
        if session.last_seq is not None and not isinstance(session.last_seq, int):
            raise KeyStoreError(f"{path} is not a valid session file")
        return session

    def names(self) -> list[str]:
        """Names of the stored sessions, sorted."""
        if not self._checked_directory(create=False):
            return []
        return sorted(
            entry.name[: -len(".json")]
            for entry in os.scandir(self._directory)
            if entry.name.endswith(".json")
            and not entry.name.startswith(".")
            and _NAME.match(entry.name[: -len(".json")])
        )

    def delete(self, name: str) -> None:
        """Forget session ``name`` here (the server keeps it until revoked or expired)."""
        path = self.path(name)
        if not self._checked_directory(create=False) or not os.path.lexists(path):
            raise KeyStoreError(f"no session named {name!r} in {self._directory}")
        document: dict[str, Any] = {}
        with contextlib.suppress(KeyStoreError):
            document = self._read(path)
        if document.get("secrets") == "keyring" and self._keyring is not None:
            with contextlib.suppress(Exception):
                self._keyring.delete_password(KEYRING_SERVICE, self._keyring_user(name))
        os.unlink(path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._reports_path(name))
        self._sync_directory()

    def with_report(self, session: StoredSession, *, seq: int, report_hash: str) -> StoredSession:
        """Remember the newest verified report of ``session`` and return the updated copy."""
        updated = replace(session, last_seq=seq, last_report_hash=report_hash)
        self.update(updated)
        return updated

    # ------------------------------------------------------------------ reports

    def _reports_path(self, name: str) -> Path:
        # Not *.json: names() lists sessions by that suffix.
        return self._directory / f"{_check_name(name)}.reports"

    def reports(self, name: str) -> list[dict[str, Any]]:
        """The verified reports kept for ``name`` (``{payload, signature}``), oldest first."""
        path = self._reports_path(name)
        if not os.path.lexists(path):
            return []
        reports = self._read(path).get("reports")
        if not isinstance(reports, list):
            raise KeyStoreError(f"{path} is not a reports file")
        return [r for r in reports if isinstance(r, dict) and set(r) == {"payload", "signature"}]

    def add_report(self, name: str, payload: Mapping[str, Any], signature: str) -> None:
        """Keep a verified report (same 0600 rules), the newest ``MAX_KEPT_REPORTS`` only.

        ``perf-agg export`` puts the chain of kept reports into proof bundles.
        """
        kept = [r for r in self.reports(name) if r["payload"].get("seq") != payload.get("seq")]
        kept.append({"payload": dict(payload), "signature": signature})
        kept.sort(key=lambda r: r["payload"].get("seq") or 0)
        kept = kept[-MAX_KEPT_REPORTS:]
        while len(kept) > 1 and (
            len(json.dumps({"v": FORMAT_VERSION, "reports": kept}, indent=2, sort_keys=True))
            > _MAX_FILE_BYTES - 64
        ):
            kept = kept[1:]  # the oldest goes first
        self._write(
            self._reports_path(name),
            {"v": FORMAT_VERSION, "reports": kept},
            replace_existing=True,
        )

    def with_log_head(self, session: StoredSession, head: dict[str, Any]) -> StoredSession:
        """Remember the newest verified log tree head (payload) and return the updated copy."""
        updated = replace(session, log_head=dict(head))
        self.update(updated)
        return updated
