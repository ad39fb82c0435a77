"""The file edge of the PKI: reading and writing certificates, CRLs and encrypted keys.

Everything else in :mod:`espfleet.pki` works on objects and bytes; this module is where
paths appear. Keys are written only encrypted (mode 0600) and every write is atomic.
``name`` arguments are the workspace-relative names used in error messages.
"""

from __future__ import annotations

from pathlib import Path

from cryptography import x509

from espfleet._io import atomic_write
from espfleet.errors import WorkspaceError
from espfleet.pki.ca import cert_pem
from espfleet.pki.keys import PrivateKey, decrypt_private_key, encrypt_private_key

__all__ = [
    "read_bytes",
    "read_certificate",
    "read_certificates",
    "read_private_key",
    "write_certificate",
    "write_private_key",
]

KEY_MODE = 0o600


def read_bytes(path: Path, *, name: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise WorkspaceError(
            f"{name} is missing: the workspace is incomplete; restore it from a backup"
        ) from None
    except OSError as error:
        raise WorkspaceError(f"cannot read {name}: {error.strerror}") from None


def read_certificates(path: Path, *, name: str) -> list[x509.Certificate]:
    data = read_bytes(path, name=name)
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        certs = []
    if not certs:
        raise WorkspaceError(
            f"{name} is not a PEM certificate: it was damaged or replaced; restore it"
        )
    return certs


def read_certificate(path: Path, *, name: str) -> x509.Certificate:
    certs = read_certificates(path, name=name)
    if len(certs) != 1:
        raise WorkspaceError(f"{name} should hold one certificate, it holds {len(certs)}")
    return certs[0]


def read_private_key(path: Path, passphrase: bytes, *, name: str) -> PrivateKey:
    return decrypt_private_key(read_bytes(path, name=name), passphrase, name=name)


def write_certificate(path: Path, *certs: x509.Certificate) -> bytes:
    data = b"".join(cert_pem(cert) for cert in certs)
    atomic_write(path, data)
    return data


def write_private_key(path: Path, key: PrivateKey, passphrase: bytes) -> bytes:
    data = encrypt_private_key(key, passphrase)
    atomic_write(path, data, mode=KEY_MODE)
    return data
