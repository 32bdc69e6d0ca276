"""Fixtures shared by the end-to-end modules; each module provides its own ``stack``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from scripts.localstack import LocalStack, free_port
from shared.client import SecureClient


@pytest.fixture
async def client(stack: LocalStack) -> AsyncIterator[SecureClient]:
    """The SDK client pinned to the stack's simulator root and PCRs, over its dev CA."""
    async with SecureClient(
        stack.base_url,
        expected_pcrs=stack.expected_pcrs(),
        root_der=stack.nsm_root_der(),
        ca_file=str(stack.ca_file),
    ) as c:
        yield c


def running_stack(
    tmp_path_factory: pytest.TempPathFactory, name: str, **options: Any
) -> Iterator[LocalStack]:
    """A started local stack on free ports (rate limit raised for load), stopped after.

    For a module's ``stack`` fixture: ``yield from running_stack(tmp_path_factory, "x")``.
    """
    extra_env = {"RATE_LIMIT_MAX": "100000", **options.pop("extra_env", {})}
    local = LocalStack(
        tmp_path_factory.mktemp(name),
        parent_port=free_port(),
        enclave_tcp_port=free_port(),
        extra_env=extra_env,
        **options,
    )
    local.start()
    try:
        yield local
    finally:
        local.stop()
