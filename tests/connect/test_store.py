"""The connect store: tokens are unguessable, entries expire, are single-use and bounded."""

from __future__ import annotations

import pytest

from calsync.connect.store import ConnectLink, ConnectStore, PendingConsent, StoreFull
from calsync.gateway.connect import TOKEN


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def link(expires_at: float = 2000.0) -> ConnectLink:
    return ConnectLink(resource_id="r", provider="google", expires_at=expires_at)


def test_tokens_are_43_urlsafe_characters_and_distinct() -> None:
    store = ConnectStore(Clock(), 100)
    tokens = {store.links.add(link()) for _ in range(50)}
    assert len(tokens) == 50
    assert all(TOKEN.fullmatch(t) for t in tokens)


def test_entries_expire_and_take_is_single_use() -> None:
    clock = Clock()
    store = ConnectStore(clock, 10)
    token = store.consents.add(PendingConsent(link_token="L", expires_at=1600.0))
    assert store.consents.get(token) is not None
    assert store.consents.take(token) is not None
    assert store.consents.take(token) is None  # replay
    late = store.consents.add(PendingConsent(link_token="L", expires_at=1600.0))
    clock.now = 1600.0
    assert store.consents.take(late) is None  # expired


def test_a_full_store_refuses_until_entries_expire() -> None:
    clock = Clock()
    store = ConnectStore(clock, 3)
    for _ in range(3):
        store.links.add(link(expires_at=1100.0))
    with pytest.raises(StoreFull):
        store.links.add(link())
    clock.now = 1100.0
    store.links.add(link())  # the expired ones were swept


def test_spending_a_link_forgets_its_consents() -> None:
    store = ConnectStore(Clock(), 10)
    token = store.links.add(link())
    state = store.consents.add(PendingConsent(link_token=token, expires_at=1500.0))
    other = store.consents.add(PendingConsent(link_token="other", expires_at=1500.0))
    store.spend(token)
    assert store.links.get(token) is None
    assert store.consents.get(state) is None
    assert store.consents.get(other) is not None
