"""Secure Boot V2 signature sectors: sign, parse, verify, and the eFuse key digest.

A signed image is the image padded with 0xFF to a 4 KB multiple, then one 4 KB
signature sector: up to three 1216-byte signature blocks, 0xFF after them. A block
(magic 0xE7) holds the SHA-256 of everything before the sector, the public key in
the form the chip's RSA/ECDSA peripheral wants (little-endian numbers), the
signature, and a CRC32 of its first 1196 bytes. The chip trusts a key when the
SHA-256 of the block's key part equals a digest burned into eFuse.

The layout and every digest here equal espsecure's (``sign-data --version 2``,
``digest-sbv2-public-key``, ``verify-signature``); this module works on bytes and
key objects instead of files.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from espfleet.errors import FormatError, InputError, PassphraseError, SigningError

__all__ = [
    "SECTOR_SIZE",
    "SIGNATURE_BLOCK_SIZE",
    "PrivateKey",
    "PublicKey",
    "Scheme",
    "SignatureBlock",
    "generate_signing_key",
    "load_private_key",
    "public_key_digest",
    "sign",
    "signature_blocks",
    "signed_length",
    "verify",
    "verify_with_digests",
]

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey
Scheme = Literal["rsa3072", "ecdsa256"]

SECTOR_SIZE: Final = 4096
SIGNATURE_BLOCK_SIZE: Final = 1216
MAX_BLOCKS: Final = 3
_MAGIC: Final = 0xE7
_VERSION: Final[dict[Scheme, int]] = {"rsa3072": 0x02, "ecdsa256": 0x03}
_CRC_COVERS: Final = 1196
_RSA_BITS: Final = 3072
_RSA_BYTES: Final = _RSA_BITS // 8
_CURVE_P256: Final = 2
_ECDSA_SHA256: Final = 0
_P256_BYTES: Final = 32
#: Where the public key sits in a block (what the eFuse digest covers), per scheme.
_KEY_SPAN: Final[dict[Scheme, slice]] = {"rsa3072": slice(36, 812), "ecdsa256": slice(36, 101)}
_PSS: Final = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)


@dataclass(frozen=True)
class SignatureBlock:
    """One parsed signature block of a signature sector."""

    index: int
    scheme: Scheme
    public_key: PublicKey = field(repr=False)
    #: The signature in the usual big-endian form (RSA-PSS bytes, or ECDSA r || s).
    signature: bytes = field(repr=False)
    #: SHA-256 of the signed content, as recorded in the block.
    image_digest: bytes
    #: SHA-256 of the key part of the block: what eFuse must hold to trust this key.
    key_digest: bytes
    crc_ok: bool

    def __post_init__(self) -> None:
        if not 0 <= self.index < MAX_BLOCKS:
            raise ValueError(f"signature block index {self.index} is not 0..{MAX_BLOCKS - 1}")
        if len(self.image_digest) != 32 or len(self.key_digest) != 32:
            raise ValueError("image and key digests are 32-byte SHA-256 values")

    def verifies(self, content: bytes) -> bool:
        """Whether the signature is a valid signature of ``content``'s SHA-256."""
        digest = hashlib.sha256(content).digest()
        try:
            if isinstance(self.public_key, rsa.RSAPublicKey):
                self.public_key.verify(
                    self.signature, digest, _PSS, utils.Prehashed(hashes.SHA256())
                )
            else:
                r = int.from_bytes(self.signature[:_P256_BYTES], "big")
                s = int.from_bytes(self.signature[_P256_BYTES:], "big")
                self.public_key.verify(
                    utils.encode_dss_signature(r, s),
                    digest,
                    ec.ECDSA(utils.Prehashed(hashes.SHA256())),
                )
        except InvalidSignature:
            return False
        return True


# --- keys ----------------------------------------------------------------------------


def generate_signing_key(scheme: Scheme = "rsa3072") -> PrivateKey:
    """A new Secure Boot V2 signing key (RSA-3072, or ECDSA P-256 where the chip allows)."""
    if scheme == "rsa3072":
        return rsa.generate_private_key(public_exponent=65537, key_size=_RSA_BITS)
    if scheme == "ecdsa256":
        return ec.generate_private_key(ec.SECP256R1())
    raise InputError(f"unknown secure boot scheme {scheme!r}: use rsa3072 or ecdsa256")


def load_private_key(pem: bytes, password: bytes | None = None) -> PrivateKey:
    """Load a PEM signing key (encrypted if ``password`` is given) and check its type."""
    try:
        key = serialization.load_pem_private_key(pem, password=password)
    except TypeError as exc:  # password given for a plain key, or missing for an encrypted one
        raise PassphraseError(
            f"cannot load the signing key: {exc}; "
            + ("pass its passphrase" if password is None else "it is not encrypted")
        ) from None
    except ValueError as exc:
        if password is not None and "password" in str(exc).lower():
            raise PassphraseError(
                "wrong passphrase for the secure boot signing key: check ESPFLEET_PASSPHRASE"
            ) from None
        raise InputError(
            f"the secure boot signing key is not a PEM private key ({exc}): "
            "use the key made by 'espfleet init' or 'espsecure generate-signing-key -v 2'"
        ) from None
    return _checked_private_key(key)


def _checked_private_key(key: object) -> PrivateKey:
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size == _RSA_BITS:
        return key
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
        return key
    raise InputError(
        f"{_describe(key)} cannot sign for Secure Boot V2: use an RSA-3072 key "
        "(every chip) or ECDSA P-256 (chips that support ECDSA V2)"
    )


def _describe(key: object) -> str:
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        return f"an RSA-{key.key_size} key"
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        return f"an ECDSA {key.curve.name} key"
    return f"a {type(key).__name__}"


def _scheme_of(key: PublicKey) -> Scheme:
    if isinstance(key, rsa.RSAPublicKey) and key.key_size == _RSA_BITS:
        return "rsa3072"
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return "ecdsa256"
    raise InputError(
        f"{_describe(key)} is not a Secure Boot V2 key: use RSA-3072 or ECDSA P-256"
    )


def _le(value: int, length: int) -> bytes:
    return value.to_bytes(length, "little")


def _key_part(key: PublicKey) -> bytes:
    """The public key as a signature block stores it (and the eFuse digest covers)."""
    if _scheme_of(key) == "rsa3072":
        assert isinstance(key, rsa.RSAPublicKey)
        numbers = key.public_numbers()
        rinv = (1 << (2 * _RSA_BITS)) % numbers.n
        m = -pow(numbers.n, -1, 1 << 32) & 0xFFFFFFFF
        return struct.pack(
            "<384sI384sI", _le(numbers.n, _RSA_BYTES), numbers.e, _le(rinv, _RSA_BYTES), m
        )
    assert isinstance(key, ec.EllipticCurvePublicKey)
    point = key.public_numbers()
    return struct.pack(
        "<B64s", _CURVE_P256, _le(point.x, _P256_BYTES) + _le(point.y, _P256_BYTES)
    )


def _public(key: PublicKey | PrivateKey) -> PublicKey:
    return key.public_key() if isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) \
        else key


def public_key_digest(public_key: PublicKey | PrivateKey) -> bytes:
    """The 32-byte digest burned into eFuse to trust this key (espsecure's
    ``digest-sbv2-public-key``)."""
    return hashlib.sha256(_key_part(_public(public_key))).digest()


# --- signing -------------------------------------------------------------------------


def _pad(data: bytes, fill: int = 0xFF) -> bytes:
    return data + bytes([fill]) * (-len(data) % SECTOR_SIZE)


def _block(key: PrivateKey, content: bytes) -> bytes:
    digest = hashlib.sha256(content).digest()
    public = key.public_key()
    if isinstance(key, rsa.RSAPrivateKey):
        signature = key.sign(digest, _PSS, utils.Prehashed(hashes.SHA256()))
        body = struct.pack(
            "<BBxx32s", _MAGIC, _VERSION["rsa3072"], digest
        ) + _key_part(public) + signature[::-1]
    else:
        r, s = utils.decode_dss_signature(
            key.sign(digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
        )
        body = struct.pack(
            "<BBBx32s", _MAGIC, _VERSION["ecdsa256"], _ECDSA_SHA256, digest
        ) + _key_part(public) + _le(r, _P256_BYTES) + _le(s, _P256_BYTES)
        body += bytes(_CRC_COVERS - len(body))
    return body + struct.pack("<I", zlib.crc32(body)) + bytes(16)


def sign(image: bytes, private_keys: Sequence[PrivateKey]) -> bytes:
    """Sign ``image`` with 1-3 keys: the image padded with 0xFF to 4 KB, then the
    signature sector (one block per key, in order), as ``espsecure sign-data -v 2``.
    """
    if not image:
        raise SigningError("cannot sign an empty image: build the image first")
    if not 1 <= len(private_keys) <= MAX_BLOCKS:
        raise SigningError(
            f"Secure Boot V2 takes 1 to {MAX_BLOCKS} signing keys, got {len(private_keys)}"
        )
    keys = [_checked_private_key(k) for k in private_keys]
    try:
        length = signed_length(image)
    except SigningError:
        pass
    else:
        raise SigningError(
            f"the image is already signed (signature sector at {length:#x}): sign the "
            "unsigned build output, or keep the existing signature"
        )
    content = _pad(image)
    end = _image_end(image)
    if end is not None and end != len(content):
        raise SigningError(
            f"{len(image) - end} bytes follow the image, which ends at {end:#x} (rounded "
            "to 4 KB): the bootloader looks for the signature there, so a signature after "
            "the extra bytes would never be found; sign the image file itself (the build's "
            ".bin), not a padded or merged one"
        )
    sector = b"".join(_block(key, content) for key in keys)
    return content + _pad(sector)


# --- parsing -------------------------------------------------------------------------


def _sector_at(image: bytes, offset: int) -> bool:
    return 0 < offset <= len(image) - SECTOR_SIZE and image[offset] == _MAGIC


def _image_end(image: bytes) -> int | None:
    """Where an app or bootloader image's signature sector must start (its length
    rounded up to 4 KB, as the bootloader computes it), or None for other data."""
    from espfleet.formats import app_image  # a sibling format, imported lazily

    try:
        length = app_image.parse(image).image_length
    except FormatError:
        return None
    return length + (-length % SECTOR_SIZE)


def signed_length(image: bytes) -> int:
    """Number of bytes the signature covers: the offset of the signature sector.

    For an app or bootloader image (alone, or at the start of a larger buffer such as
    a whole flash partition) that is only where the bootloader looks: right after the
    image's own length rounded up to 4 KB. Other data is signed when its last 4 KB is
    a signature sector.
    """
    offset = _image_end(image)
    if offset is None and len(image) % SECTOR_SIZE == 0:
        offset = len(image) - SECTOR_SIZE
    if offset is not None and _sector_at(image, offset):
        return offset
    raise SigningError(
        "the image is not signed: no Secure Boot V2 signature sector follows it; "
        "sign it with 'espfleet' (or espsecure sign-data --version 2)"
    )


def _parse_block(raw: bytes, index: int, offset: int) -> SignatureBlock:
    version = raw[1]
    crc_ok = struct.unpack_from("<I", raw, _CRC_COVERS)[0] == zlib.crc32(raw[:_CRC_COVERS])
    schemes = {v: k for k, v in _VERSION.items()}
    if version not in schemes:
        raise FormatError(
            f"signature block {index} at offset {offset:#x}: unknown scheme version "
            f"{version:#04x} (espfleet reads RSA-3072 0x02 and ECDSA 0x03)",
            offset=offset + 1,
        )
    scheme = schemes[version]
    image_digest = raw[4:36]
    key_digest = hashlib.sha256(raw[_KEY_SPAN[scheme]]).digest()
    try:
        if scheme == "rsa3072":
            n_le, e, _rinv, _m, sig_le = struct.unpack_from("<384sI384sI384s", raw, 36)
            public: PublicKey = rsa.RSAPublicNumbers(e, int.from_bytes(n_le, "little")).public_key()
            signature = sig_le[::-1]
        else:
            sha, curve = raw[2], raw[36]
            if sha != _ECDSA_SHA256 or curve != _CURVE_P256:
                raise ValueError(f"curve {curve} with hash type {sha} (espfleet reads P-256)")
            x, y = raw[37:69], raw[69:101]
            public = ec.EllipticCurvePublicNumbers(
                int.from_bytes(x, "little"), int.from_bytes(y, "little"), ec.SECP256R1()
            ).public_key()
            r, s = raw[101:133], raw[133:165]
            signature = r[::-1] + s[::-1]
    except ValueError as exc:
        raise FormatError(
            f"signature block {index} at offset {offset:#x}: bad {scheme} public key ({exc})",
            offset=offset + 36,
        ) from None
    return SignatureBlock(index, scheme, public, signature, image_digest, key_digest, crc_ok)


def _blocks(image: bytes, start: int, limit: int = MAX_BLOCKS) -> list[SignatureBlock]:
    """The blocks of the signature sector at ``start``; only the first ``limit`` are
    parsed (a chip that reads one block never looks at the others)."""
    blocks = []
    for index in range(min(limit, MAX_BLOCKS)):
        offset = start + index * SIGNATURE_BLOCK_SIZE
        raw = image[offset : offset + SIGNATURE_BLOCK_SIZE]
        if raw[0] != _MAGIC:
            break
        blocks.append(_parse_block(raw, index, offset))
    return blocks


def signature_blocks(image: bytes) -> list[SignatureBlock]:
    """The signature blocks of a signed image, in sector order (at most three).

    Raises :class:`SigningError` if the image has no signature sector and
    :class:`FormatError` for a block whose key cannot be read.
    """
    return _blocks(image, signed_length(image))


# --- verification --------------------------------------------------------------------


def verify(image: bytes, public_key: PublicKey | PrivateKey) -> None:
    """Check that some block of ``image`` is a valid signature by ``public_key``.

    Like ``espsecure verify-signature --version 2``; raises :class:`SigningError`.
    """
    length = signed_length(image)
    content = image[:length]
    wanted = public_key_digest(public_key)
    digest = hashlib.sha256(content).digest()
    blocks = [b for b in _blocks(image, length) if b.crc_ok]
    if not blocks:
        raise SigningError("the signature sector has no valid block (bad CRC): re-sign the image")
    for block in blocks:
        if block.key_digest != wanted:
            continue
        if block.image_digest != digest:
            raise SigningError(
                f"signature block {block.index}: the image was altered after signing "
                "(its SHA-256 differs from the signed one): rebuild and re-sign it"
            )
        if block.verifies(content):
            return
        raise SigningError(
            f"signature block {block.index}: bad signature for this key: the block was "
            "tampered with; re-sign the image"
        )
    raise SigningError(
        "the image is not signed by this key (no signature block carries it): sign it with "
        "the fleet's secure boot key"
    )


def verify_with_digests(
    image: bytes,
    trusted_digests: Sequence[bytes | None],
    revoked: Sequence[bool] = (),
    *,
    max_blocks: int = MAX_BLOCKS,
) -> int:
    """Verify ``image`` as the ROM and bootloader do, against eFuse key digests.

    ``trusted_digests[i]`` is digest slot i (None if empty), ``revoked[i]`` whether
    slot i is revoked. Some block among the first ``max_blocks`` (1 on ESP32, which
    reads only the first block) must carry a key whose digest is in a non-revoked
    slot, match the image, and verify. Returns that slot index; raises
    :class:`SigningError` saying why not (unsigned, unknown key, revoked slot, image
    altered, bad signature).
    """
    try:
        length = signed_length(image)
        blocks = _blocks(image, length, max_blocks)
    except FormatError as exc:
        raise SigningError(f"refused: malformed signature sector: {exc}") from None
    blocks = [b for b in blocks if b.crc_ok]
    if not blocks:
        raise SigningError("refused: the image is unsigned (no valid signature block)")
    content = image[:length]
    digest = hashlib.sha256(content).digest()
    reasons: list[tuple[int, str]] = []
    for block in blocks:
        slots = [i for i, d in enumerate(trusted_digests) if d == block.key_digest]
        live = [i for i in slots if not (i < len(revoked) and revoked[i])]
        if not slots:
            reasons.append((0, f"block {block.index}: its key is not in any eFuse digest slot "
                                "(unknown key)"))
        elif not live:
            reasons.append((1, f"block {block.index}: its key's digest slot "
                                f"{slots[0]} is revoked"))
        elif block.image_digest != digest:
            reasons.append((3, f"block {block.index}: the image was altered after signing"))
        elif not block.verifies(content):
            reasons.append((2, f"block {block.index}: bad signature"))
        else:
            return live[0]
    reasons.sort(reverse=True)
    raise SigningError("refused by secure boot: " + "; ".join(r for _, r in reasons))
