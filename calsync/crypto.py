"""Encryption of credentials and the signed tokens the gateway checks without a lookup.

Both keys are derived from ``CALSYNC_SECRET_KEY`` with HKDF under different labels,
so the encryption key and the webhook-signing key are never the same bytes.
Ciphertexts are Fernet tokens (AES-128-CBC + HMAC-SHA256, authenticated).
"""

from __future__ import annotations

import base64
import hashlib
import hmac

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from calsync.errors import CryptoError


def _derive(secret_key: str, label: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=b"calsync/v1", info=label).derive(
        secret_key.encode()
    )


class SecretBox:
    """Encrypts and decrypts short secrets (refresh tokens, passwords)."""

    __slots__ = ("_fernet",)

    def __init__(self, secret_key: str) -> None:
        self._fernet = Fernet(base64.urlsafe_b64encode(_derive(secret_key, b"credentials")))

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode("ascii")

    def decrypt(self, ciphertext: str) -> str:
        """Raises :class:`CryptoError` when the ciphertext was not made with this key."""
        try:
            return self._fernet.decrypt(ciphertext.encode("ascii")).decode()
        except (InvalidToken, UnicodeError, ValueError) as exc:
            raise CryptoError("credential ciphertext failed authentication") from exc


class WebhookSigner:
    """Signs and verifies the tokens handed to providers with a push channel.

    A Google channel token is ``<resource id>.<signature>`` where the signature is an
    HMAC over the channel id and the resource id: the gateway learns the resource id
    from the token and checks it in constant time, without a table lookup, and a
    token copied to another channel id does not verify.
    """

    __slots__ = ("_key",)

    def __init__(self, secret_key: str) -> None:
        self._key = _derive(secret_key, b"webhooks")

    def _signature(self, purpose: str, *parts: str) -> str:
        message = "\x1f".join((purpose, *parts)).encode()
        digest = hmac.new(self._key, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")

    def channel_token(self, channel_id: str, resource_id: str) -> str:
        encoded = base64.urlsafe_b64encode(resource_id.encode()).rstrip(b"=").decode("ascii")
        return f"{encoded}.{self._signature('google-channel', channel_id, resource_id)}"

    def client_state(self, resource_id: str) -> str:
        """The Graph ``clientState`` of a resource's subscription (43 characters, ≤ 128)."""
        return self._signature("graph-client-state", resource_id)

    def verify_client_state(self, resource_id: str, client_state: str) -> bool:
        expected = self.client_state(resource_id)
        return hmac.compare_digest(expected.encode(), client_state.encode())

    def verify_channel_token(self, channel_id: str, token: str) -> str | None:
        """The resource id the token was made for, or ``None`` if it does not verify."""
        encoded, sep, signature = token.rpartition(".")
        if not sep or not encoded:
            return None
        try:
            resource_id = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
        except (ValueError, UnicodeError):
            return None
        expected = self._signature("google-channel", channel_id, resource_id)
        if hmac.compare_digest(expected.encode(), signature.encode()):
            return resource_id
        return None
