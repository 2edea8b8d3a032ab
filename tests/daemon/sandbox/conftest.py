"""Fixtures of the sandbox's own tests: a sandbox with a fast clock, and the real SDK pointed at it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import together

from daemon.sandbox import SandboxHandle, start_sandbox
from tests.daemon.sandbox.helpers import API_KEY

FAST = 400.0  # a 1-epoch job of 10 steps takes 160 simulated s = 0.4 s


@pytest.fixture
async def sandbox() -> AsyncIterator[SandboxHandle]:
    """A sandbox on a free loopback port with a fast clock (a small fine-tune completes in about 0.4 s)."""
    handle = await start_sandbox(speed=FAST, seed=7)
    yield handle
    await handle.close()


@pytest.fixture
async def client(sandbox: SandboxHandle) -> AsyncIterator[together.AsyncTogether]:
    """The SDK as users build it (default retries), pointed at the sandbox."""
    sdk = together.AsyncTogether(base_url=sandbox.base_url, api_key=API_KEY)
    yield sdk
    await sdk.close()
