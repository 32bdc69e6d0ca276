"""Layering rules: sans-IO modules stay free of I/O, the SDK stays free of server deps."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

SANS_IO = [
    "shared.protocol",
    "shared.cbor",
    "shared.encoding",
    "shared.envelope",
    "shared.attestation",
    "shared.signing",
    "shared.ids",
    "shared.owner",
    "shared.connect",
    "shared.allowlist",
    "shared.merkle",
    "shared.translog",
    "shared.disclosure",
    "shared.bundle",
    "shared.sealed_state",
    "enclave.cms",
]


def imported_after(module: str) -> set[str]:
    """The set of modules loaded by importing ``module`` in a fresh interpreter."""
    code = f"import sys, {module}; print('\\n'.join(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    return set(result.stdout.split())


def direct_imports(module: str) -> set[str]:
    """Top-level names of the modules that ``module``'s own source imports."""
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin is not None
    tree = ast.parse(Path(spec.origin).read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("module", SANS_IO)
def test_sans_io_modules_import_no_io(module: str) -> None:
    """Protocol and crypto modules import no asyncio, socket or psycopg (STYLE rule 2).

    socket is checked in the module's own imports only: cryptography.x509 pulls it in
    through email.utils without opening anything; asyncio and psycopg must not load at all.
    """
    assert not {"asyncio", "socket", "psycopg", "aiohttp"} & direct_imports(module)
    assert not {"asyncio", "psycopg", "aiohttp"} & imported_after(module)


def test_client_sdk_needs_no_server_dependencies() -> None:
    """The client SDK imports no parent/enclave code, no psycopg and no ccxt."""
    loaded = imported_after("shared.client")
    assert not {m for m in loaded if m.split(".")[0] in {"psycopg", "ccxt", "parent", "enclave"}}
