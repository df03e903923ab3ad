"""MemoryProvider (the fake the sync and service tests run on) held to the provider contract."""

from __future__ import annotations

from datetime import datetime

import pytest

from calsync.model import Occurrence, StatusIntent, Transparency
from calsync.testing.memory_provider import MemoryProvider
from tests.providers.contract import Cap, ProviderContract

PAGE_SIZE = 3


def make_provider() -> MemoryProvider:
    """The one place the contract builds a MemoryProvider."""
    return MemoryProvider(page_size=PAGE_SIZE)


class MemoryWorld:
    """The provider is its own store: :meth:`provider` hands out that one instance."""

    page_size = PAGE_SIZE
    push_address = "https://hooks.example.com/google"

    def __init__(self) -> None:
        self.store = make_provider()

    def provider(self) -> MemoryProvider:
        return self.store

    def native_id(self, key: str) -> str:
        return key

    async def add(self, key: str, start: datetime, end: datetime) -> None:
        self.store.put(Occurrence(key, start, end, False, Transparency.OPAQUE, StatusIntent.BUSY))

    async def move(self, key: str, start: datetime, end: datetime) -> None:
        await self.add(key, start, end)

    async def delete(self, key: str) -> None:
        self.store.remove(key)

    async def expire_cursor(self, cursor: str) -> str:
        self.store.invalidate_cursors()
        return cursor


class TestMemoryContract(ProviderContract):
    lacks = {
        Cap.RATE_LIMIT: "no HTTP: tests that need a throttle raise RateLimited from a subclass",
        Cap.TOKEN_REFRESH: "no credentials, so no access token to expire",
        Cap.REVOCATION: "no credentials to revoke (service tests subclass it to raise)",
        Cap.QUARANTINE: "it stores normalized Occurrences: nothing can be malformed",
    }

    @pytest.fixture
    def world(self) -> MemoryWorld:
        return MemoryWorld()
