"""The flash-encryption engine: which key the AES hardware holds, and the math.

The key comes from the eFuse *hardware shadow* (see :mod:`espfleet.device.efuse`),
never from the register view: a read-protected key reads as zeros to software but
the engine still has it. The math is espfleet's format codec
(:mod:`espfleet.formats.flash_encryption`, byte-identical to espsecure).
"""

from __future__ import annotations

from espfleet.chips import chip_facts
from espfleet.device.efuse import EfuseController
from espfleet.errors import DeviceError, InputError

__all__ = ["KeyPurposes", "alignment", "crypt", "engine_key", "flash_crypt_config"]


#: XTS chips: KEY_PURPOSE_n values the engine takes keys from (espefuse's numbering).
class KeyPurposes:
    XTS_AES_256_KEY_1 = 2
    XTS_AES_256_KEY_2 = 3
    XTS_AES_128_KEY = 4


def alignment(chip: str) -> int:
    """Write granularity of the engine: 32 bytes (ESP32 AES blocks) or 16 (XTS)."""
    return 32 if chip_facts(chip).encryption_scheme == "esp32-aes256" else 16


def flash_crypt_config(efuse: EfuseController) -> int:
    """FLASH_CRYPT_CONFIG as the engine uses it (0xF on XTS chips: not applicable)."""
    field = chip_facts(efuse.chip).crypt_config_field
    return efuse.get(field, hardware=True) if field else 0xF


def engine_key(efuse: EfuseController) -> bytes | None:
    """The flash-encryption key the engine holds, in key-file byte order, or None."""
    facts = chip_facts(efuse.chip)
    if facts.encryption_scheme == "esp32-aes256":
        block = efuse.block_bytes(facts.fe_key_blocks[0], hardware=True)
        return None if not any(block) else block[::-1]
    by_purpose: dict[int, bytes] = {}
    for n in range(6):
        key_block = f"BLOCK_KEY{n}"
        if key_block in facts.key_block_for_xts_forbidden:
            continue  # SOC_EFUSE_BLOCK9_KEY_PURPOSE_QUIRK: the AES engine never reads it
        purpose = efuse.get(f"KEY_PURPOSE_{n}", hardware=True)
        by_purpose.setdefault(purpose, efuse.block_bytes(key_block, hardware=True)[::-1])
    if KeyPurposes.XTS_AES_128_KEY in by_purpose:
        return by_purpose[KeyPurposes.XTS_AES_128_KEY]
    if 64 not in facts.fe_key_lengths:
        return None  # no XTS-AES-256 on this chip (C3): purposes 2/3 are reserved
    if KeyPurposes.XTS_AES_256_KEY_1 in by_purpose and KeyPurposes.XTS_AES_256_KEY_2 in by_purpose:
        return by_purpose[KeyPurposes.XTS_AES_256_KEY_1] + by_purpose[KeyPurposes.XTS_AES_256_KEY_2]
    return None


def crypt(efuse: EfuseController, address: int, data: bytes, *, decrypt: bool) -> bytes:
    """Run ``data`` at flash ``address`` through the engine with the chip's key."""
    key = engine_key(efuse)
    if key is None:
        raise DeviceError(
            "no flash-encryption key is burned in eFuse: the engine has nothing to use; "
            "burn the key (espefuse burn-key) before enabling flash encryption"
        )
    align = alignment(efuse.chip)
    if address % align or len(data) % align:
        raise DeviceError(
            f"flash-encryption access {address:#x}+{len(data):#x} is not {align}-byte aligned"
        )
    from espfleet.formats import flash_encryption  # numpy: loaded on first use only

    codec = flash_encryption.decrypt if decrypt else flash_encryption.encrypt
    try:
        return codec(data, key, address, efuse.chip, flash_crypt_config(efuse))
    except InputError as error:  # e.g. a burned key XTS cannot use
        raise DeviceError(f"the flash-encryption engine cannot use its key: {error}") from None
