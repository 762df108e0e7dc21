"""Secrets a user gives us (a Hugging Face write token), encrypted at rest with Fernet.

The keys come from the environment: HUB_TOKEN_ENCRYPTION_KEYS, Fernet keys separated by commas,
the first encrypting and every one decrypting (so a new key can be put first and the old one
kept until the tokens are re-saved). Without it, one key is derived from SECRET_KEY (HKDF), so
the embedded default works; production should set its own, since changing SECRET_KEY would then
make the saved tokens unreadable (their owners are asked to save them again).
"""

from __future__ import annotations

import base64

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings


class UnreadableSecret(Exception):
    """Stored with a key we no longer have."""


def _derived_key() -> bytes:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"llmtuner hub tokens")
    return base64.urlsafe_b64encode(hkdf.derive(settings.SECRET_KEY.encode()))


def _fernet() -> MultiFernet:
    keys = settings.HUB_TOKEN_ENCRYPTION_KEYS or [_derived_key()]
    return MultiFernet([Fernet(key) for key in keys])


def encrypt(plain: str) -> str:
    return _fernet().encrypt(plain.encode()).decode("ascii")


def decrypt(stored: str) -> str:
    try:
        return _fernet().decrypt(stored.encode("ascii")).decode()
    except (InvalidToken, ValueError) as exc:
        raise UnreadableSecret("stored with a key that is no longer configured") from exc
