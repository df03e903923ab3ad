from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from calsync.crypto import SecretBox, WebhookSigner
from calsync.errors import CryptoError

KEY = "k" * 32


def test_secret_box_round_trip_and_ciphertext_hides_plaintext() -> None:
    box = SecretBox(KEY)
    ciphertext = box.encrypt("1//refresh-token")
    assert "refresh" not in ciphertext
    assert box.decrypt(ciphertext) == "1//refresh-token"


def test_secret_box_refuses_other_keys_and_tampering() -> None:
    ciphertext = SecretBox(KEY).encrypt("secret")
    with pytest.raises(CryptoError):
        SecretBox("another-key-0123456789").decrypt(ciphertext)
    with pytest.raises(CryptoError):
        SecretBox(KEY).decrypt(ciphertext[:-4] + "AAAA")


@given(channel=st.text(min_size=1, max_size=64), resource=st.text(min_size=1, max_size=128))
def test_channel_tokens_verify_only_for_their_channel(channel: str, resource: str) -> None:
    signer = WebhookSigner(KEY)
    token = signer.channel_token(channel, resource)
    assert len(token) <= 256 or len(resource.encode()) > 128
    assert signer.verify_channel_token(channel, token) == resource
    assert signer.verify_channel_token(channel + "x", token) is None
    assert WebhookSigner("other-key-0123456789").verify_channel_token(channel, token) is None


@pytest.mark.parametrize("token", ["", ".", "abc", "abc.def", "!!!.sig", "a.b.c"])
def test_garbage_tokens_do_not_verify(token: str) -> None:
    assert WebhookSigner(KEY).verify_channel_token("chan", token) is None
