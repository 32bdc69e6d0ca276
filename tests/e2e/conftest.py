"""Fixtures shared by the end-to-end modules; each module provides its own ``stack``."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from scripts.localstack import LocalStack
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
