"""Builders for flash dumps: ciphertext-like background, erased regions, planted secrets."""

from __future__ import annotations

import datetime
import io
import random
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

DUMP_SIZE = 0x100000


def clean_dump(size: int = DUMP_SIZE, seed: int = 1) -> bytearray:
    """What an encrypted flash looks like: random bytes, with the top quarter erased."""
    rng = random.Random(seed)
    data = bytearray(rng.randbytes(size))
    data[size * 3 // 4 :] = b"\xff" * (size - size * 3 // 4)
    return data


def plant(dump: bytearray, offset: int, blob: bytes) -> int:
    dump[offset : offset + len(blob)] = blob
    return offset


def make_cert(
    cn: str = "esp32-24a1600a1b2c",
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=365))
        .sign(key, hashes.SHA256())
    )
    return cert, key


def nvs_partition(entries: Sequence[tuple[str, str, str]], size: int = 0x6000,
                  key: bytes | None = None) -> bytes:
    """An NVS partition made by the reference tool (esp-idf-nvs-partition-gen).

    ``entries``: (key, encoding, value) in namespace "identity"; ``key`` (64 bytes)
    makes it encrypted NVS.
    """
    from esp_idf_nvs_partition_gen import nvs_partition_gen as gen

    with tempfile.TemporaryDirectory() as tmp:
        out_path = Path(tmp) / "nvs.bin"
        with open(out_path, "wb") as out:
            nvs = gen.nvs_open(out, size - 4096, gen.Page.VERSION2,
                               is_encrypt=key is not None, key=key)
            gen.write_entry(nvs, "identity", "namespace", "", "")
            for name, encoding, value in entries:
                gen.write_entry(nvs, name, "data", encoding, value)
            gen.nvs_close(nvs)
        data = out_path.read_bytes()
    return data + b"\xff" * (size - len(data))


def app_image(payload: bytes, project: bytes = b"seed-firmware") -> bytes:
    """A plaintext ESP32 app image (esptool's builder) with ``payload`` in DROM."""
    from esptool.bin_image import ELFSection, ESP32FirmwareImage

    desc = bytearray(256)
    desc[0:4] = (0xABCD5432).to_bytes(4, "little")
    desc[16:21] = b"1.0.0"
    desc[48 : 48 + len(project)] = project
    image = ESP32FirmwareImage()
    image.entrypoint = 0x40080400
    image.segments = [
        ELFSection(b".flash.rodata", 0x3F400020, bytes(desc) + payload, 0),
        ELFSection(b".iram0.text", 0x40080000, bytes(range(256)) * 16, 0),
    ]
    return bytes(image.save(None))


def encrypt(data: bytes, key: bytes, address: int, xts: bool = False) -> bytes:
    """Flash encryption as provisioning does it (espsecure, ESP32 scheme by default)."""
    import espsecure

    out = io.BytesIO()
    padded = data + b"\xff" * (-len(data) % 32)
    espsecure.encrypt_flash_data(io.BytesIO(key), out, address, 0xF, xts, io.BytesIO(padded))
    return out.getvalue()


@pytest.fixture
def pem_key_and_cert() -> tuple[bytes, bytes]:
    cert, key = make_cert()
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return key_pem, cert.public_bytes(serialization.Encoding.PEM)


class Kit:
    """The builders above, handed to tests as a fixture (test modules cannot import
    conftest under --import-mode=importlib)."""

    clean_dump = staticmethod(clean_dump)
    plant = staticmethod(plant)
    make_cert = staticmethod(make_cert)
    nvs_partition = staticmethod(nvs_partition)
    app_image = staticmethod(app_image)
    encrypt = staticmethod(encrypt)


@pytest.fixture(scope="session")
def kit() -> Kit:
    return Kit()


@pytest.fixture(scope="session")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(65537, 2048)
