"""Flash encryption against espsecure (in-process) and Espressif's encrypted vectors."""

from __future__ import annotations

import io
import os
from pathlib import Path

import espsecure
import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from espfleet.errors import FormatError, InputError
from espfleet.formats import flash_encryption as fe
from espfleet.formats._aes_vec import aes256_decrypt_blocks, aes256_encrypt_blocks


def _espsecure(
    data: bytes, key: bytes, address: int, conf: int, xts: bool, decrypting: bool = False
) -> bytes:
    out = io.BytesIO()
    run = espsecure.decrypt_flash_data if decrypting else espsecure.encrypt_flash_data
    run(io.BytesIO(key), out, address, conf, xts, io.BytesIO(data))
    return out.getvalue()


@st.composite
def _cases(draw: st.DrawFn) -> tuple[str, bytes, int, int, bytes]:
    chip = draw(st.sampled_from(["esp32", "esp32s3", "esp32c3"]))
    length = draw(st.sampled_from(fe.key_lengths(chip)))
    key = draw(st.binary(min_size=length, max_size=length))
    if chip != "esp32" and key[: length // 2] == key[length // 2 :]:
        key = bytes([key[0] ^ 1]) + key[1:]  # XTS refuses equal halves (tested below)
    address = 16 * draw(st.integers(min_value=0, max_value=(16 << 20) // 16))
    conf = draw(st.integers(min_value=0, max_value=15))
    data = draw(st.binary(min_size=1, max_size=700).map(lambda b: b + bytes(-len(b) % 16)))
    return chip, key, address, conf, data


@settings(max_examples=150, deadline=None)
@given(_cases())
def test_encrypt_equals_espsecure_for_random_keys_addresses_configs(
    case: tuple[str, bytes, int, int, bytes],
) -> None:
    chip, key, address, conf, data = case
    xts = chip != "esp32"
    ours = fe.encrypt(data, key, address, chip, conf)
    assert ours == _espsecure(data, key, address, conf, xts)
    assert fe.decrypt(ours, key, address, chip, conf) == data
    assert fe.decrypt(data, key, address, chip, conf) == _espsecure(
        data, key, address, conf, xts, decrypting=True
    )


def test_esp32_tweak_tables_equal_espsecure_tweak_for_every_block_of_16mb() -> None:
    """The two-table tweak shortcut (valid below 16 MB, exact beyond) against espsecure's
    own tweak for every 32-byte block address, across the 16 MB boundary. Masking by
    FLASH_CRYPT_CONFIG is an AND after the tweak, so the full 0xF mask covers every bit."""
    count = (16 << 20) // 32 + 64
    words = fe._esp32_keys(bytes(32), 0, count, 0xF) & 0xFFFFFFFF  # plain (low) halves
    tweak_range = espsecure._flash_encryption_tweak_range_bits(0xF)
    reference = b"".join(
        espsecure._flash_encryption_tweak_key(0, block << 5, tweak_range) for block in range(count)
    )
    assert (words == np.frombuffer(reference, ">u4").reshape(count, 8)).all()


@pytest.mark.parametrize("address", [16 << 20, (16 << 20) + 0x30, 0x7FFF_FFF0 - 64])
def test_esp32_addresses_beyond_16mb_match_espsecure(address: int) -> None:
    key, data = bytes(range(32)), bytes(range(64))
    assert fe.encrypt(data, key, address, "esp32") == _espsecure(data, key, address, 0xF, False)


@pytest.mark.parametrize(
    ("plain", "encrypted", "key", "address", "conf", "chip"),
    [
        ("bootloader.bin", "bootloader-encrypted.bin", "256bit_key.bin", 0x1000, 0xF, "esp32"),
        ("bootloader.bin", "bootloader-encrypted-conf0.bin", "256bit_key.bin", 0x1000,
         0x0, "esp32"),
        ("bootloader.bin", "bootloader-encrypted-conf3.bin", "256bit_key.bin", 0x1000,
         0x3, "esp32"),
        ("bootloader.bin", "bootloader-encrypted-conf9.bin", "256bit_key.bin", 0x1000,
         0x9, "esp32"),
        ("bootloader.bin", "bootloader-encrypted-confc.bin", "256bit_key.bin", 0x1000,
         0xC, "esp32"),
        ("bootloader.bin", "bootloader-encrypted-aes-xts.bin", "256bit_key.bin", 0x1000, 0xF,
         "esp32c3"),
        ("hello-world-signed.bin", "hello-world-signed-encrypted.bin", "ef-flashencryption-key.bin",
         0x20000, 0xF, "esp32"),
        ("hello-world-signed.bin", "hello-world-signed-encrypted-aes-xts.bin",
         "ef-flashencryption-key.bin", 0x20000, 0xF, "esp32s3"),
        ("hello-world-signed.bin", "hello-world-signed-encrypted-aes-xts-256.bin", "512bit_key.bin",
         0x10000, 0xF, "esp32s3"),
    ],
)
def test_espressif_vectors_encrypt_and_decrypt(
    vectors: Path, plain: str, encrypted: str, key: str, address: int, conf: int, chip: str
) -> None:
    plaintext = (vectors / plain).read_bytes()
    ciphertext = (vectors / encrypted).read_bytes()
    key_bytes = (vectors / key).read_bytes()
    whole = len(plaintext) - len(plaintext) % 16  # espsecure pads a short tail at random
    assert fe.encrypt(plaintext[:whole], key_bytes, address, chip, conf) == ciphertext[:whole]
    assert fe.decrypt(ciphertext[:whole], key_bytes, address, chip, conf) == plaintext[:whole]


def test_24_byte_key_is_extended_like_the_3_4_coding_scheme() -> None:
    key, data = bytes(range(100, 124)), bytes(range(96))
    assert fe.encrypt(data, key, 0x1000, "esp32") == _espsecure(data, key, 0x1000, 0xF, False)
    assert fe.key_lengths("esp32") == (24, 32)
    assert fe.key_lengths("esp32s3") == (32, 64)
    assert fe.key_lengths("esp32c3") == (32,)


def test_empty_data_encrypts_to_empty() -> None:
    assert fe.encrypt(b"", bytes(32), 0, "esp32") == b""


def test_ciphertext_depends_on_address() -> None:
    data = bytes(4096)
    key = bytes(range(32))
    for chip in ("esp32", "esp32s3"):
        assert fe.encrypt(data, key, 0x10000, chip) != fe.encrypt(data, key, 0x11000, chip)


def test_wrong_key_does_not_decrypt() -> None:
    data = b"secret firmware!" * 8
    key, other = bytes(range(32)), bytes(range(1, 33))
    for chip in ("esp32", "esp32c3"):
        assert fe.decrypt(fe.encrypt(data, key, 0x10000, chip), other, 0x10000, chip) != data


def test_image_moved_to_another_address_does_not_decrypt() -> None:
    """Ciphertext copied from one slot to another decrypts to garbage."""
    data = b"app image bytes." * 64
    key = bytes(range(32))
    for chip in ("esp32", "esp32s3"):
        moved = fe.decrypt(fe.encrypt(data, key, 0x10000, chip), key, 0x110000, chip)
        assert moved != data


@pytest.mark.parametrize("address", [1, 8, 0x1001, 0x100F])
def test_misaligned_address_is_a_format_error(address: int) -> None:
    with pytest.raises(FormatError, match="multiple of 16") as info:
        fe.encrypt(bytes(32), bytes(32), address, "esp32")
    assert info.value.offset == address


@pytest.mark.parametrize("length", [1, 15, 17, 33])
def test_length_not_multiple_of_16_is_a_format_error(length: int) -> None:
    for chip in ("esp32", "esp32c3"):
        with pytest.raises(FormatError, match="not a multiple of 16"):
            fe.decrypt(bytes(length), bytes(32), 0, chip)


@pytest.mark.parametrize(("chip", "length"), [("esp32", 16), ("esp32", 64), ("esp32c3", 64),
                                              ("esp32s3", 24), ("esp32s3", 16)])
def test_wrong_key_length_is_an_input_error(chip: str, length: int) -> None:
    with pytest.raises(InputError, match="key is"):
        fe.encrypt(bytes(32), bytes(length), 0, chip)


def test_bad_config_and_address_space_and_chip() -> None:
    with pytest.raises(InputError, match="FLASH_CRYPT_CONFIG"):
        fe.encrypt(bytes(32), bytes(32), 0, "esp32", 0x10)
    with pytest.raises(FormatError, match="32-bit"):
        fe.encrypt(bytes(32), bytes(32), 1 << 32, "esp32")
    with pytest.raises(FormatError, match="32-bit"):
        fe.encrypt(bytes(32), bytes(32), -16, "esp32")
    with pytest.raises(InputError, match="unknown chip"):
        fe.encrypt(bytes(32), bytes(32), 0, "esp8266")


def test_xts_key_with_equal_halves_is_refused() -> None:
    with pytest.raises(InputError, match="equal halves"):
        fe.encrypt(bytes(32), bytes(16) * 2, 0, "esp32c3")


@settings(max_examples=30, deadline=None)
@given(st.integers(min_value=1, max_value=9000), st.integers(min_value=1, max_value=3),
       st.booleans(), st.integers(min_value=0, max_value=2**32))
def test_vectorised_aes_equals_cryptography(
    keys_count: int, per_key: int, reversed_blocks: bool, seed: int
) -> None:
    """The numpy AES behind the ESP32 scheme, against OpenSSL, across chunk boundaries."""
    rng = np.random.default_rng(seed)
    keys = rng.integers(0, 256, (keys_count, 32), dtype=np.uint8)
    blocks = rng.integers(0, 256, (keys_count, per_key, 16), dtype=np.uint8)
    encrypted = aes256_encrypt_blocks(blocks, keys, reversed_blocks=reversed_blocks)
    decrypted = aes256_decrypt_blocks(blocks, keys, reversed_blocks=reversed_blocks)
    flip = (slice(None), slice(None), slice(None, None, -1) if reversed_blocks else slice(None))
    for n in {0, keys_count // 2, keys_count - 1}:
        cipher = Cipher(algorithms.AES(keys[n].tobytes()), modes.ECB())
        plain = blocks[flip][n].tobytes()
        assert encrypted[flip][n].tobytes() == cipher.encryptor().update(plain)
        assert decrypted[flip][n].tobytes() == cipher.decryptor().update(plain)
    assert (aes256_decrypt_blocks(encrypted, keys, reversed_blocks=reversed_blocks)
            == blocks).all()


@pytest.mark.parametrize("keys_count", [1, 999, 1000, 2500, 3001])
def test_vectorised_aes_chunking_edges(monkeypatch: pytest.MonkeyPatch, keys_count: int) -> None:
    """Several round chunks per key-schedule chunk, and a short last chunk."""
    import espfleet.formats._aes_vec as aes

    monkeypatch.setattr(aes, "_CHUNK", 500)
    monkeypatch.setattr(aes, "_KEY_CHUNK", 1200)
    rng = np.random.default_rng(keys_count)
    keys = rng.integers(0, 256, (keys_count, 32), dtype=np.uint8)
    blocks = rng.integers(0, 256, (keys_count, 2, 16), dtype=np.uint8)
    for n in sorted({0, keys_count // 3, keys_count - 1}):
        cipher = Cipher(algorithms.AES(keys[n].tobytes()), modes.ECB())
        assert aes256_decrypt_blocks(blocks, keys)[n].tobytes() == \
            cipher.decryptor().update(blocks[n].tobytes())
        assert aes256_encrypt_blocks(blocks, aes.key_words(keys))[n].tobytes() == \
            cipher.encryptor().update(blocks[n].tobytes())
    premixed = aes.with_inv_mixed(aes.key_words(keys))
    untouched = premixed.copy()
    assert (aes256_decrypt_blocks(blocks, premixed, premixed=True)
            == aes256_decrypt_blocks(blocks, keys)).all()
    assert (aes256_encrypt_blocks(blocks, premixed, premixed=True)
            == aes256_encrypt_blocks(blocks, keys)).all()
    assert (premixed == untouched).all()  # the caller's key words are not modified
    # Linear: mixing the parts of a XOR equals mixing the XOR.
    other = aes.key_words(keys[::-1].copy())
    assert (aes.with_inv_mixed(aes.key_words(keys) ^ other)
            == premixed ^ aes.with_inv_mixed(other)).all()


def test_threads_encrypting_at_once_get_their_own_results() -> None:
    """The AES keeps scratch arrays between calls; numpy releases the GIL while it
    fills them, so each thread must have its own."""
    from concurrent.futures import ThreadPoolExecutor

    jobs = [(os.urandom(32), os.urandom(64 << 10), 0x10000 * (n + 1)) for n in range(6)]
    expected = [_espsecure(data, key, address, 0xF, False) for key, data, address in jobs]
    with ThreadPoolExecutor(max_workers=3) as pool:
        for _ in range(3):
            results = list(pool.map(lambda job: fe.encrypt(job[1], job[0], job[2], "esp32"),
                                    jobs))
            assert results == expected


def test_scratch_memory_kept_between_calls_is_bounded() -> None:
    """Many blocks per key need large scratch arrays: correct, and not kept afterwards."""
    import espfleet.formats._aes_vec as aes

    rng = np.random.default_rng(7)
    keys = rng.integers(0, 256, (3000, 32), dtype=np.uint8)
    blocks = rng.integers(0, 256, (3000, 120, 16), dtype=np.uint8)  # 5.5 MB of state
    encrypted = aes256_encrypt_blocks(blocks, keys)
    cipher = Cipher(algorithms.AES(keys[-1].tobytes()), modes.ECB())
    assert encrypted[-1].tobytes() == cipher.encryptor().update(blocks[-1].tobytes())
    assert (aes256_decrypt_blocks(encrypted, keys) == blocks).all()
    kept = sum(buffer.nbytes for buffer in aes._ARENA.buffers.values())
    assert kept <= 6 * aes._ARENA_MAX_BYTES
    assert all(buffer.nbytes <= aes._ARENA_MAX_BYTES for buffer in aes._ARENA.buffers.values())
