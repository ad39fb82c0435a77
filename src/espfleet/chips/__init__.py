"""Per-chip security facts, as data.

Everything that differs between ESP32, ESP32-S3 and ESP32-C3 in the host-based
security workflow lives in :data:`CHIPS`, keyed by chip name. Code asks the table
(``chip_facts("esp32s3").bootloader_offset``) instead of branching on the chip name.

eFuse names are espefuse's names (``espefuse/efuse_defs/<chip>.yaml``) so that a
plan step can be handed to espefuse as is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from espfleet.errors import InputError

__all__ = [
    "CHIPS",
    "ChipFacts",
    "EncryptionScheme",
    "SecureBootScheme",
    "chip_facts",
    "chip_names",
]

EncryptionScheme = Literal["esp32-aes256", "xts-aes"]
SecureBootScheme = Literal["rsa3072", "ecdsa256"]


@dataclass(frozen=True)
class ChipFacts:
    """Security-relevant facts of one chip family."""

    name: str
    description: str
    #: ``chip_id`` in the app image extended header (esptool's IMAGE_CHIP_ID).
    image_chip_id: int
    #: Value read at 0x40001000 by esptool's chip detection (ROM loader).
    rom_magic: tuple[int, ...]
    bootloader_offset: int
    default_partition_table_offset: int
    #: Size of the ``espefuse --virt`` file (the eFuse register window) in bytes.
    efuse_file_size: int
    encryption_scheme: EncryptionScheme
    #: Accepted flash-encryption key lengths in bytes (XTS-AES-256 is 64).
    fe_key_lengths: tuple[int, ...]
    #: eFuse key blocks that may hold a flash-encryption key, in preferred order.
    fe_key_blocks: tuple[str, ...]
    #: espefuse key purpose per key length (``burn_key BLOCK KEYFILE PURPOSE``).
    fe_key_purpose: dict[int, str]
    #: The counter that turns flash encryption on when it has an odd number of bits set.
    crypt_cnt_field: str
    crypt_cnt_bits: int
    crypt_cnt_release: int
    crypt_cnt_development: int
    #: ESP32 only: FLASH_CRYPT_CONFIG, and the value the workflow burns.
    crypt_config_field: str | None
    crypt_config_value: int | None
    #: Plaintext re-flashes a development-mode chip has in its life: each one spends
    #: two bits of the crypt counter (off, then on again), so 7 bits give 3 and 3 give 1.
    plaintext_reflashes: int
    secure_boot_schemes: tuple[SecureBootScheme, ...]
    #: eFuse blocks that may hold a secure boot V2 public-key digest.
    sb_digest_blocks: tuple[str, ...]
    #: espefuse purpose for each digest slot (``burn_key_digest``), or None on ESP32.
    sb_digest_purposes: tuple[str, ...] | None
    sb_enable_field: str
    #: Fields that revoke digest slots 0..2 (empty on ESP32, which has one slot).
    sb_revoke_fields: tuple[str, ...]
    #: Minimum chip revision (major*100+minor) for secure boot V2.
    sb_v2_min_revision: int
    #: Revision a new virtual chip gets unless told otherwise: a current silicon
    #: revision that supports everything espfleet does (ESP32 v3.0, S3 v0.2, C3 v0.4).
    virtual_default_revision: int
    #: Field holding the anti-rollback counter compared with ``secure_version``.
    secure_version_field: str
    secure_version_bits: int
    #: Release-mode hardening burns, in order; the last one locks download mode.
    release_hardening: tuple[str, ...]
    #: Fields to write-protect in release mode (applied before the download lock).
    release_write_protect: tuple[str, ...]
    #: The field whose bits say which key blocks cannot be read by software.
    rd_dis_field: str
    #: Fields that, once set, stop UART download mode or restrict it to secure download.
    download_lock_fields: tuple[str, ...]
    #: Flash sizes the default partition layout supports.
    flash_sizes: tuple[str, ...] = ("2MB", "4MB", "8MB", "16MB")
    #: Write protections that must come AFTER the download-lock burn, because they also
    #: lock it (ESP32: WR_DIS of FLASH_CRYPT_CNT also write-protects UART_DOWNLOAD_DIS).
    write_protect_after_download_lock: tuple[str, ...] = ()

    @property
    def key_block_for_xts_forbidden(self) -> tuple[str, ...]:
        """Key blocks that cannot hold an XTS key (BLOCK_KEY5 on S3/C3)."""
        return ("BLOCK_KEY5",) if self.encryption_scheme == "xts-aes" else ()


_XTS_KEY_BLOCKS = ("BLOCK_KEY0", "BLOCK_KEY1", "BLOCK_KEY2", "BLOCK_KEY3", "BLOCK_KEY4")

CHIPS: dict[str, ChipFacts] = {
    "esp32": ChipFacts(
        name="esp32",
        description="ESP32 (revision v3.0 or newer for Secure Boot V2)",
        image_chip_id=0,
        rom_magic=(0x00F01D83,),
        bootloader_offset=0x1000,
        default_partition_table_offset=0x8000,
        efuse_file_size=288,
        encryption_scheme="esp32-aes256",
        fe_key_lengths=(32,),
        fe_key_blocks=("BLOCK1",),
        fe_key_purpose={32: "flash_encryption"},
        crypt_cnt_field="FLASH_CRYPT_CNT",
        crypt_cnt_bits=7,
        crypt_cnt_release=0x7F,
        crypt_cnt_development=0x01,
        crypt_config_field="FLASH_CRYPT_CONFIG",
        crypt_config_value=0xF,
        plaintext_reflashes=3,
        secure_boot_schemes=("rsa3072",),
        sb_digest_blocks=("BLOCK2",),
        sb_digest_purposes=None,
        sb_enable_field="ABS_DONE_1",
        sb_revoke_fields=(),
        sb_v2_min_revision=300,
        virtual_default_revision=300,
        secure_version_field="SECURE_VERSION",
        secure_version_bits=32,
        release_hardening=(
            "DISABLE_DL_ENCRYPT",
            "DISABLE_DL_DECRYPT",
            "DISABLE_DL_CACHE",
            "JTAG_DISABLE",
            "CONSOLE_DEBUG_DISABLE",
            "UART_DOWNLOAD_DIS",
        ),
        release_write_protect=("RD_DIS", "FLASH_CRYPT_CNT"),
        rd_dis_field="RD_DIS",
        download_lock_fields=("UART_DOWNLOAD_DIS",),
        write_protect_after_download_lock=("FLASH_CRYPT_CNT",),
    ),
    "esp32s3": ChipFacts(
        name="esp32s3",
        description="ESP32-S3",
        image_chip_id=9,
        rom_magic=(0x00000009,),
        bootloader_offset=0x0,
        default_partition_table_offset=0x8000,
        efuse_file_size=512,
        encryption_scheme="xts-aes",
        fe_key_lengths=(32, 64),
        fe_key_blocks=_XTS_KEY_BLOCKS,
        fe_key_purpose={32: "XTS_AES_128_KEY", 64: "XTS_AES_256_KEY"},
        crypt_cnt_field="SPI_BOOT_CRYPT_CNT",
        crypt_cnt_bits=3,
        crypt_cnt_release=0x7,
        crypt_cnt_development=0x1,
        crypt_config_field=None,
        crypt_config_value=None,
        plaintext_reflashes=1,
        secure_boot_schemes=("rsa3072",),
        sb_digest_blocks=(*_XTS_KEY_BLOCKS, "BLOCK_KEY5"),
        sb_digest_purposes=("SECURE_BOOT_DIGEST0", "SECURE_BOOT_DIGEST1", "SECURE_BOOT_DIGEST2"),
        sb_enable_field="SECURE_BOOT_EN",
        sb_revoke_fields=(
            "SECURE_BOOT_KEY_REVOKE0",
            "SECURE_BOOT_KEY_REVOKE1",
            "SECURE_BOOT_KEY_REVOKE2",
        ),
        sb_v2_min_revision=0,
        virtual_default_revision=2,
        secure_version_field="SECURE_VERSION",
        secure_version_bits=16,
        release_hardening=(
            "DIS_DOWNLOAD_ICACHE",
            "DIS_DOWNLOAD_DCACHE",
            "DIS_PAD_JTAG",
            "DIS_USB_JTAG",
            "DIS_DIRECT_BOOT",
            "DIS_DOWNLOAD_MANUAL_ENCRYPT",
            "ENABLE_SECURITY_DOWNLOAD",
        ),
        release_write_protect=("RD_DIS", "SPI_BOOT_CRYPT_CNT"),
        rd_dis_field="RD_DIS",
        download_lock_fields=("DIS_DOWNLOAD_MODE", "ENABLE_SECURITY_DOWNLOAD"),
    ),
    "esp32c3": ChipFacts(
        name="esp32c3",
        description="ESP32-C3",
        image_chip_id=5,
        rom_magic=(0x6921506F, 0x1B31506F, 0x4881606F, 0x4361606F),
        bootloader_offset=0x0,
        default_partition_table_offset=0x8000,
        efuse_file_size=512,
        encryption_scheme="xts-aes",
        fe_key_lengths=(32,),
        fe_key_blocks=_XTS_KEY_BLOCKS,
        fe_key_purpose={32: "XTS_AES_128_KEY"},
        crypt_cnt_field="SPI_BOOT_CRYPT_CNT",
        crypt_cnt_bits=3,
        crypt_cnt_release=0x7,
        crypt_cnt_development=0x1,
        crypt_config_field=None,
        crypt_config_value=None,
        plaintext_reflashes=1,
        secure_boot_schemes=("rsa3072",),
        sb_digest_blocks=(*_XTS_KEY_BLOCKS, "BLOCK_KEY5"),
        sb_digest_purposes=("SECURE_BOOT_DIGEST0", "SECURE_BOOT_DIGEST1", "SECURE_BOOT_DIGEST2"),
        sb_enable_field="SECURE_BOOT_EN",
        sb_revoke_fields=(
            "SECURE_BOOT_KEY_REVOKE0",
            "SECURE_BOOT_KEY_REVOKE1",
            "SECURE_BOOT_KEY_REVOKE2",
        ),
        sb_v2_min_revision=3,
        virtual_default_revision=4,
        secure_version_field="SECURE_VERSION",
        secure_version_bits=16,
        release_hardening=(
            "DIS_DOWNLOAD_ICACHE",
            "DIS_PAD_JTAG",
            "DIS_USB_JTAG",
            "DIS_DIRECT_BOOT",
            "DIS_DOWNLOAD_MANUAL_ENCRYPT",
            "ENABLE_SECURITY_DOWNLOAD",
        ),
        release_write_protect=("RD_DIS", "SPI_BOOT_CRYPT_CNT"),
        rd_dis_field="RD_DIS",
        download_lock_fields=("DIS_DOWNLOAD_MODE", "ENABLE_SECURITY_DOWNLOAD"),
    ),
}


def chip_names() -> tuple[str, ...]:
    """The chips espfleet supports, in table order."""
    return tuple(CHIPS)


def chip_facts(chip: str) -> ChipFacts:
    """Look up a chip, with an error that lists the supported ones."""
    try:
        return CHIPS[chip]
    except KeyError:
        raise InputError(
            f"unknown chip {chip!r}: espfleet supports {', '.join(CHIPS)}"
        ) from None
