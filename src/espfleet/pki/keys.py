"""Private keys: generation and encrypted PEM at rest.

Every private key espfleet keeps is PKCS#8 PEM encrypted with the workspace passphrase
(PBES2: PBKDF2-HMAC-SHA256 + AES-256-CBC, cryptography's ``BestAvailableEncryption``),
so ``openssl pkey -passin`` reads them too. A wrong passphrase is a
:class:`~espfleet.errors.PassphraseError` naming the file, never a bare ``ValueError``.
"""

from __future__ import annotations

from typing import TypeAlias

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from espfleet.errors import InputError, PassphraseError, PkiError

__all__ = [
    "ENCRYPTED_PEM_MARKER",
    "PrivateKey",
    "decrypt_private_key",
    "encrypt_private_key",
    "generate_ec_key",
    "generate_rsa3072_key",
    "is_encrypted_pem",
    "plain_private_key_pem",
    "public_key_pem",
]

PrivateKey: TypeAlias = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
ENCRYPTED_PEM_MARKER = b"-----BEGIN ENCRYPTED PRIVATE KEY-----"


def generate_ec_key() -> ec.EllipticCurvePrivateKey:
    """An ECDSA P-256 key (CA, server and device TLS keys)."""
    return ec.generate_private_key(ec.SECP256R1())


def generate_rsa3072_key() -> rsa.RSAPrivateKey:
    """An RSA-3072 key: what Secure Boot V2 requires on ESP32 (and accepts on S3/C3)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=3072)


def encrypt_private_key(key: PrivateKey, passphrase: bytes) -> bytes:
    """PKCS#8 PEM, encrypted with ``passphrase``."""
    if not passphrase:
        raise PassphraseError("an empty passphrase cannot protect a private key: set one")
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(passphrase),
    )


def plain_private_key_pem(key: PrivateKey) -> bytes:
    """Unencrypted PKCS#8 PEM: only for a key that leaves the workspace for a device."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def public_key_pem(key: PrivateKey | ec.EllipticCurvePublicKey | rsa.RSAPublicKey) -> bytes:
    public = key.public_key() if isinstance(key, PrivateKey) else key
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def is_encrypted_pem(data: bytes) -> bool:
    """True if ``data`` is an encrypted PKCS#8 PEM (or a legacy PEM with a DEK-Info header)."""
    text = data.lstrip()
    return text.startswith(ENCRYPTED_PEM_MARKER) or (
        b"PRIVATE KEY-----" in text and b"Proc-Type: 4,ENCRYPTED" in text
    )


def decrypt_private_key(data: bytes, passphrase: bytes, *, name: str) -> PrivateKey:
    """Load an encrypted PEM key; ``name`` (e.g. ``pki/issuing-ca.key.pem``) goes in errors."""
    if not is_encrypted_pem(data):
        raise PkiError(
            f"{name} is not an encrypted private key: every key in the workspace must be "
            "encrypted at rest; restore it from a backup"
        )
    try:
        key = serialization.load_pem_private_key(data, passphrase)
    except ValueError as error:
        if "password" in str(error).lower() or "decrypt" in str(error).lower():
            raise PassphraseError(
                f"the passphrase does not decrypt {name}: check ESPFLEET_PASSPHRASE"
            ) from None
        # A wrong passphrase ends here too (about 1 in 200) when the garbage it decrypts
        # to happens to be validly padded: this is not proof of a damaged file.
        raise PassphraseError(
            f"the passphrase does not decrypt {name} to a private key: check "
            f"ESPFLEET_PASSPHRASE; if it is right, {name} is damaged: restore it from a backup"
        ) from None
    except TypeError as error:
        raise InputError(f"cannot load {name}: {error}") from None
    if not isinstance(key, PrivateKey):
        raise PkiError(f"{name} holds a {type(key).__name__}, expected an EC or RSA key")
    return key
