"""espfleet.pki: the fleet's certificate authority.

Pure core (``keys``, ``profiles``, ``ca``, ``csr``, ``crl``, ``verify``) over objects
and bytes; ``store`` is the file edge. See :class:`CertificateAuthority` for issuing.
"""

from __future__ import annotations

from espfleet.pki.ca import (
    CaHierarchy,
    CertificateAuthority,
    IssuedCert,
    fingerprint_sha256,
    format_serial,
    new_hierarchy,
    parse_serial,
)
from espfleet.pki.crl import REVOCATION_REASONS, RevokedEntry, build_crl, load_crl
from espfleet.pki.csr import check_csr, load_csr
from espfleet.pki.keys import decrypt_private_key, encrypt_private_key, is_encrypted_pem
from espfleet.pki.verify import check_not_revoked, verify_client_chain, verify_server_chain

__all__ = [
    "REVOCATION_REASONS",
    "CaHierarchy",
    "CertificateAuthority",
    "IssuedCert",
    "RevokedEntry",
    "build_crl",
    "check_csr",
    "check_not_revoked",
    "decrypt_private_key",
    "encrypt_private_key",
    "fingerprint_sha256",
    "format_serial",
    "is_encrypted_pem",
    "load_crl",
    "load_csr",
    "new_hierarchy",
    "parse_serial",
    "verify_client_chain",
    "verify_server_chain",
]
