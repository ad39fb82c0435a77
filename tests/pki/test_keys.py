from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import given, settings
from hypothesis import strategies as st

from espfleet.errors import PassphraseError, PkiError
from espfleet.pki.keys import (
    decrypt_private_key,
    encrypt_private_key,
    generate_ec_key,
    is_encrypted_pem,
    plain_private_key_pem,
    public_key_pem,
)

KEY = generate_ec_key()


@settings(max_examples=20, deadline=None)
@given(st.binary(min_size=1, max_size=64).filter(lambda b: b"\x00" not in b))
def test_encrypted_key_round_trip(passphrase: bytes) -> None:
    pem = encrypt_private_key(KEY, passphrase)
    assert is_encrypted_pem(pem)
    assert public_key_pem(decrypt_private_key(pem, passphrase, name="k")) == public_key_pem(KEY)


def test_wrong_passphrase_names_the_file() -> None:
    pem = encrypt_private_key(KEY, b"right passphrase")
    with pytest.raises(PassphraseError, match=r"does not decrypt pki/x\.key\.pem"):
        decrypt_private_key(pem, b"wrong passphrase", name="pki/x.key.pem")


def test_wrong_passphrase_that_decrypts_to_padded_garbage_is_a_passphrase_error() -> None:
    """About 1 wrong passphrase in 200 decrypts to validly padded garbage, which
    cryptography reports as undecodable key data, not as a wrong password: it must still
    be a PassphraseError (exit 2), not advice to restore a key that is fine."""
    pem = encrypt_private_key(KEY, b"right passphrase")
    for i in range(5000):
        wrong = b"wrong passphrase %d" % i
        try:
            serialization.load_pem_private_key(pem, wrong)
        except ValueError as error:
            if "password" not in str(error).lower():
                break
    else:
        pytest.fail("no wrong passphrase decrypted to padded garbage in 5000 tries")
    with pytest.raises(PassphraseError, match=r"does not decrypt pki/x\.key\.pem to a private"):
        decrypt_private_key(pem, wrong, name="pki/x.key.pem")


def test_plain_key_in_the_workspace_is_refused() -> None:
    pem = plain_private_key_pem(KEY)
    assert not is_encrypted_pem(pem)
    with pytest.raises(PkiError, match="not an encrypted private key"):
        decrypt_private_key(pem, b"whatever1", name="pki/x.key.pem")


def test_openssl_reads_the_encrypted_key(tmp_path: Path) -> None:
    path = tmp_path / "k.pem"
    path.write_bytes(encrypt_private_key(KEY, b"open sesame"))
    out = subprocess.run(
        ["openssl", "pkey", "-in", str(path), "-passin", "pass:open sesame", "-pubout"],
        check=True,
        capture_output=True,
    ).stdout
    assert out == public_key_pem(KEY)
    bad = subprocess.run(
        ["openssl", "pkey", "-in", str(path), "-passin", "pass:wrong", "-noout"],
        capture_output=True,
    )
    assert bad.returncode != 0
