from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from calsync.crypto import ChannelClaim, SecretBox, WebhookSigner
from calsync.errors import CryptoError

KEY = "k" * 32
EXPIRY = 1_900_000_000_000  # 2030, in epoch ms


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


@given(
    channel=st.text(min_size=1, max_size=64),
    resource=st.text(min_size=1, max_size=128),
    expiry=st.integers(min_value=1, max_value=253_402_300_799_999),
)
def test_channel_tokens_verify_only_for_their_channel(
    channel: str, resource: str, expiry: int
) -> None:
    signer = WebhookSigner(KEY)
    try:
        token = signer.channel_token(channel, resource, expires_at_ms=expiry)
    except ValueError:
        assert len(resource.encode()) > 128  # only ids over Google's 256-character token
        return
    assert len(token) <= 256
    assert signer.verify_channel_token(channel, token) == ChannelClaim(resource, expiry)
    assert signer.verify_channel_token(channel + "x", token) is None
    assert WebhookSigner("other-key-0123456789").verify_channel_token(channel, token) is None


def test_a_128_character_resource_id_fits_googles_256() -> None:
    token = WebhookSigner(KEY).channel_token("c" * 64, "r" * 128, expires_at_ms=EXPIRY)
    assert len(token) <= 256


def test_the_expiry_is_signed() -> None:
    signer = WebhookSigner(KEY)
    encoded, expiry, signature = signer.channel_token("chan", "room-1", expires_at_ms=EXPIRY).split(
        "."
    )
    assert expiry == str(EXPIRY)
    longer = f"{encoded}.{EXPIRY * 10}.{signature}"
    assert signer.verify_channel_token("chan", longer) is None


def test_a_claim_knows_when_it_expired() -> None:
    claim = WebhookSigner(KEY).verify_channel_token(
        "chan", WebhookSigner(KEY).channel_token("chan", "room-1", expires_at_ms=EXPIRY)
    )
    assert claim is not None
    assert not claim.expired(EXPIRY / 1000 - 1)
    assert claim.expired(EXPIRY / 1000 + 0.001)


def test_old_two_part_tokens_do_not_verify() -> None:
    """The format before expiry was bound in: ``<b64 resource>.<sig>`` over (channel, resource)."""
    import hmac

    from calsync.crypto import _derive

    key = _derive(KEY, b"webhooks")
    digest = hmac.new(key, "\x1f".join(("google-channel", "chan", "room-1")).encode(), "sha256")
    signature = base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode()
    encoded = base64.urlsafe_b64encode(b"room-1").rstrip(b"=").decode()
    assert WebhookSigner(KEY).verify_channel_token("chan", f"{encoded}.{signature}") is None


def test_parsing_is_strict() -> None:
    signer = WebhookSigner(KEY)
    token = signer.channel_token("chan", "room-1", expires_at_ms=EXPIRY)
    encoded, expiry, signature = token.split(".")
    variants = [
        f"{encoded}.0{expiry}.{signature}",  # a leading zero
        f"{encoded}.{expiry}.{signature}=",  # padding
        f"{encoded}=.{expiry}.{signature}",
        f"{encoded}.{expiry}.{signature}.",
        f" {token}",
        f"{token}\n",
        f"{encoded}.{'٣' * 13}.{signature}",  # non-ASCII digits
        f"{encoded}.{'9' * 5000}.{signature}",  # beyond int()'s digit limit
        token + "A" * 300,
    ]
    for variant in variants:
        assert signer.verify_channel_token("chan", variant) is None, variant


def test_non_canonical_base64_does_not_verify() -> None:
    signer = WebhookSigner(KEY)
    token = signer.channel_token("chan", "a", expires_at_ms=EXPIRY)  # "YQ": spare bits are 0
    encoded, rest = token.split(".", 1)
    assert encoded == "YQ"
    assert signer.verify_channel_token("chan", f"YR.{rest}") is None  # decodes to "a" too


def test_undecodable_header_bytes_do_not_raise() -> None:
    signer = WebhookSigner(KEY)
    token = signer.channel_token("chan", "room-1", expires_at_ms=EXPIRY)
    assert signer.verify_channel_token("chan\udcff", token) is None
    assert not signer.verify_client_state("room-1", "\ud800")


@pytest.mark.parametrize("expiry", [0, -1, 253_402_300_800_000])
def test_implausible_expiries_are_refused_when_signing(expiry: int) -> None:
    with pytest.raises(ValueError, match="expires_at_ms"):
        WebhookSigner(KEY).channel_token("chan", "room-1", expires_at_ms=expiry)


@pytest.mark.parametrize("token", ["", ".", "..", "abc", "abc.def", "!!!.sig", "a.b.c"])
def test_garbage_tokens_do_not_verify(token: str) -> None:
    assert WebhookSigner(KEY).verify_channel_token("chan", token) is None
