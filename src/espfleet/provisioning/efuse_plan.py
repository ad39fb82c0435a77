"""The eFuse plan: the ordered, irreversible espefuse operations for one device.

Pure data derived from :mod:`espfleet.chips`; ``espfleet flash`` executes it and the
audit checks a device against it. The order is ESP-IDF's host-based workflow
("Enable Flash Encryption and Secure Boot V2 externally"):

``pre_flash`` (must precede the first boot of pre-encrypted, signed flash)
  1. flash-encryption key into its block (read- and write-protected by espefuse),
  2. ESP32: FLASH_CRYPT_CONFIG = 0xF,
  3. the crypt counter (release: all bits; development: 1),
  4. the Secure Boot V2 public-key digest, then the secure boot enable bit,
  5. release on S3/C3: revoke the unused digest slots.

Flash encryption comes before secure boot because hardening secure boot
write-protects RD_DIS, after which no key can be read-protected.

``post_flash`` (release only; the images are written between the phases)
  6. the chip's release hardening burns (download-mode crypto/cache, JTAG, ...),
  7. write protections (RD_DIS, the crypt counter),
  8. the download-mode lock last: after it esptool/espefuse may not reach the chip
     again. On ESP32 the write protection of FLASH_CRYPT_CNT also locks
     UART_DOWNLOAD_DIS, so it follows that burn (UART_DOWNLOAD_DIS takes effect at
     the next reset, so both happen in the same session).

Executing a step with espefuse (see :meth:`EfuseStep.espefuse_args`):

* ``burn_key``: ``burn_key <block> <keyfile> [<purpose>]``. On ESP32 the block is
  named by its purpose alias (``flash_encryption``), which makes espefuse reverse
  the byte order and read-protect the block, as the hardware expects.
* ``burn_key_digest``: the 32-byte public-key digest (the manifest's
  ``secure_boot_digest``, handed to espefuse in memory; on the command line a file)
  burned with ``burn_key <block> digest.bin <purpose>``
  (ESP32: ``burn_key secure_boot_v2 digest.bin``), which is what
  ``burn_key_digest <pubkey.pem>`` does; digests are write- but never read-protected.
* ``burn_efuse``: ``burn_efuse <field> <value>``.
* ``write_protect_efuse`` / ``read_protect_efuse``: ``<command> <field>``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, cast, get_args

from espfleet.chips import ChipFacts, chip_facts
from espfleet.errors import InputError, ProvisioningError

__all__ = [
    "SOURCE_FLASH_ENCRYPTION_KEY",
    "SOURCE_SECURE_BOOT_DIGEST",
    "Action",
    "EfusePlan",
    "EfuseStep",
    "Mode",
    "Phase",
    "plan_for",
]

Phase = Literal["pre_flash", "post_flash"]
Action = Literal[
    "burn_key", "burn_key_digest", "burn_efuse", "write_protect_efuse", "read_protect_efuse"
]
Mode = Literal["release", "development"]

PHASES: tuple[str, ...] = get_args(Phase)
ACTIONS: tuple[str, ...] = get_args(Action)
MODES: tuple[str, ...] = get_args(Mode)

#: ``source`` values: which secret or artifact supplies the data of a key burn.
SOURCE_FLASH_ENCRYPTION_KEY = "flash_encryption_key"
SOURCE_SECURE_BOOT_DIGEST = "secure_boot_digest"
SOURCES = (SOURCE_FLASH_ENCRYPTION_KEY, SOURCE_SECURE_BOOT_DIGEST)

#: ESP32 key blocks that espefuse addresses by purpose alias.
_ESP32_BLOCK_ALIASES = {"flash_encryption": "BLOCK1", "secure_boot_v2": "BLOCK2"}


@dataclass(frozen=True)
class EfuseStep:
    """One espefuse operation. Names are espefuse's (``efuse_defs/<chip>.yaml``)."""

    phase: Phase
    action: Action
    #: eFuse block (BLOCK1, BLOCK2, BLOCK_KEY0..) or field name.
    target: str
    #: Value for ``burn_efuse``.
    value: int | None = None
    #: Key purpose for key burns (flash_encryption, secure_boot_v2, XTS_AES_128_KEY, ...).
    purpose: str | None = None
    #: Which secret/artifact supplies the data of a key burn.
    source: str | None = None
    #: One line shown in the plan.
    why: str = ""

    def __post_init__(self) -> None:
        if self.phase not in PHASES:
            raise ProvisioningError(f"eFuse step phase {self.phase!r} is not one of {PHASES}")
        if self.action not in ACTIONS:
            raise ProvisioningError(f"eFuse step action {self.action!r} is not one of {ACTIONS}")
        if not self.target:
            raise ProvisioningError(f"eFuse step {self.action} has no target")
        is_key = self.action in ("burn_key", "burn_key_digest")
        if is_key and (self.purpose is None or self.source not in SOURCES):
            raise ProvisioningError(
                f"eFuse step {self.action} {self.target} needs a purpose and a source in {SOURCES}"
            )
        if not is_key and self.source is not None:
            raise ProvisioningError(f"eFuse step {self.action} {self.target} takes no key source")
        if self.action == "burn_efuse":
            if self.value is None or self.value < 0:
                raise ProvisioningError(f"burn_efuse {self.target} needs a non-negative value")
        elif self.value is not None:
            raise ProvisioningError(f"eFuse step {self.action} {self.target} takes no value")

    @property
    def is_key_burn(self) -> bool:
        return self.action in ("burn_key", "burn_key_digest")

    def espefuse_args(self, data_file: str = "<file>") -> list[str]:
        """The espefuse command line (after ``--chip/--port``) that performs this step.

        ``data_file`` names the file holding the key or digest of a key burn.
        """
        if self.is_key_burn:
            assert self.purpose is not None
            if _ESP32_BLOCK_ALIASES.get(self.purpose) == self.target:
                return ["burn-key", self.purpose, data_file]
            return ["burn-key", self.target, data_file, self.purpose]
        if self.action == "burn_efuse":
            return ["burn-efuse", self.target, hex(cast(int, self.value))]
        return [self.action.replace("_", "-"), self.target]

    def describe(self) -> str:
        """Short human form: ``burn_efuse FLASH_CRYPT_CNT=0x7f``."""
        if self.action == "burn_efuse":
            return f"burn_efuse {self.target}={cast(int, self.value):#x}"
        if self.is_key_burn:
            return f"{self.action} {self.target} ({self.purpose}) <- {self.source}"
        return f"{self.action} {self.target}"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class EfusePlan:
    """The ordered eFuse operations for one chip and mode."""

    chip: str
    mode: Mode
    steps: tuple[EfuseStep, ...]

    def __post_init__(self) -> None:
        chip_facts(self.chip)
        if self.mode not in MODES:
            raise InputError(f"mode {self.mode!r} is not one of {', '.join(MODES)}")
        seen_post = False
        for step in self.steps:
            if step.phase == "post_flash":
                seen_post = True
            elif seen_post:
                raise ProvisioningError(
                    f"eFuse plan puts pre_flash step {step.describe()} after a post_flash step"
                )

    def pre_flash(self) -> tuple[EfuseStep, ...]:
        return tuple(s for s in self.steps if s.phase == "pre_flash")

    def post_flash(self) -> tuple[EfuseStep, ...]:
        return tuple(s for s in self.steps if s.phase == "post_flash")

    def expected_fields(self) -> dict[str, int]:
        """The field values the chip reports once the plan ran (``burn_efuse`` steps)."""
        return {s.target: cast(int, s.value) for s in self.steps if s.action == "burn_efuse"}

    def leaves_open(self) -> tuple[str, ...]:
        """What this plan deliberately does not lock (empty for release)."""
        if self.mode == "release":
            return ()
        facts = chip_facts(self.chip)
        open_items = [
            f"{facts.crypt_cnt_field} stays writable: flash encryption can be turned off "
            f"({facts.plaintext_reflashes} plaintext re-flash(es) left in the chip's life)",
            "UART download mode stays open with flash-encryption access: anyone with the "
            "board can read decrypted flash and write plaintext images",
            "JTAG stays enabled: a debugger can read RAM (keys in use, NVS contents)",
            f"{facts.rd_dis_field} is not write-protected",
        ]
        if facts.sb_revoke_fields:
            open_items.append("unused secure boot digest slots are not revoked")
        return tuple(open_items)

    def to_json(self) -> list[dict[str, Any]]:
        return [s.to_json() for s in self.steps]

    @classmethod
    def from_json(cls, chip: str, mode: str, data: Sequence[Mapping[str, Any]]) -> EfusePlan:
        steps = []
        for index, item in enumerate(data):
            try:
                steps.append(EfuseStep(**dict(item)))
            except TypeError as error:
                raise ProvisioningError(
                    f"eFuse plan step {index} is malformed ({error}): rebuild the bundle "
                    "with `espfleet provision`"
                ) from None
        return cls(chip=chip, mode=cast(Mode, mode), steps=tuple(steps))


def plan_for(chip: str, mode: str, *, fe_key_len: int = 32) -> EfusePlan:
    """The eFuse plan of ``chip`` in ``mode`` (``release`` or ``development``)."""
    facts = chip_facts(chip)
    if mode not in MODES:
        raise InputError(
            f"mode {mode!r} is not one of {', '.join(MODES)} (release is the default; "
            "development must be asked for by name)"
        )
    if fe_key_len not in facts.fe_key_lengths:
        raise InputError(
            f"a {fe_key_len}-byte flash-encryption key does not fit {chip}: it takes "
            f"{' or '.join(str(n) for n in facts.fe_key_lengths)} bytes"
        )
    release = mode == "release"
    steps = [*_flash_encryption_steps(facts, release, fe_key_len)]
    steps += _secure_boot_steps(facts, release, fe_key_len)
    if release:
        steps += _hardening_steps(facts)
    return EfusePlan(chip=chip, mode=cast(Mode, mode), steps=tuple(steps))


def _blocks_used_by_fe_key(facts: ChipFacts, fe_key_len: int) -> int:
    """XTS-AES-256 spreads its 64 bytes over two consecutive key blocks."""
    return 2 if facts.encryption_scheme == "xts-aes" and fe_key_len == 64 else 1


def _flash_encryption_steps(
    facts: ChipFacts, release: bool, fe_key_len: int
) -> list[EfuseStep]:
    purpose = facts.fe_key_purpose[fe_key_len]
    block = facts.fe_key_blocks[0]
    blocks = _blocks_used_by_fe_key(facts, fe_key_len)
    where = block if blocks == 1 else f"{block} and the next free key block"
    steps = [
        EfuseStep(
            "pre_flash", "burn_key", block, purpose=purpose,
            source=SOURCE_FLASH_ENCRYPTION_KEY,
            why=f"this device's own flash-encryption key into {where}, read- and "
            "write-protected",
        )
    ]
    if facts.crypt_config_field is not None and facts.crypt_config_value is not None:
        steps.append(EfuseStep(
            "pre_flash", "burn_efuse", facts.crypt_config_field,
            value=facts.crypt_config_value,
            why="use every key bit in the per-block address tweak, as the host encryption did",
        ))
    counter = facts.crypt_cnt_release if release else facts.crypt_cnt_development
    steps.append(EfuseStep(
        "pre_flash", "burn_efuse", facts.crypt_cnt_field, value=counter,
        why=(
            "turn flash encryption on for good (all counter bits set: it can never be "
            "turned off)" if release else
            "turn flash encryption on in development mode (the counter stays writable)"
        ) + " before the first boot of the pre-encrypted images",
    ))
    return steps


def _secure_boot_steps(facts: ChipFacts, release: bool, fe_key_len: int) -> list[EfuseStep]:
    fe_blocks = facts.fe_key_blocks[: _blocks_used_by_fe_key(facts, fe_key_len)]
    digest_block = next(b for b in facts.sb_digest_blocks if b not in fe_blocks)
    # ESP32 has one digest block, which espefuse addresses by its alias.
    purpose = facts.sb_digest_purposes[0] if facts.sb_digest_purposes else "secure_boot_v2"
    steps = [
        EfuseStep(
            "pre_flash", "burn_key_digest", digest_block, purpose=purpose,
            source=SOURCE_SECURE_BOOT_DIGEST,
            why="the fleet signing key's public-key digest (readable, write-protected)",
        ),
        EfuseStep(
            "pre_flash", "burn_efuse", facts.sb_enable_field, value=1,
            why="enable Secure Boot V2: the ROM verifies the signed bootloader on every boot",
        ),
    ]
    if release:
        steps += [
            EfuseStep(
                "pre_flash", "burn_efuse", field, value=1,
                why="revoke an unused digest slot so nobody can add a second signing key",
            )
            for field in facts.sb_revoke_fields[1:]
        ]
    return steps


def _hardening_steps(facts: ChipFacts) -> list[EfuseStep]:
    locks = [f for f in facts.release_hardening if f in facts.download_lock_fields]
    early_protect = [
        f for f in facts.release_write_protect
        if f not in facts.write_protect_after_download_lock
    ]
    steps = [
        EfuseStep("post_flash", "burn_efuse", field, value=1, why=_HARDENING_WHY.get(field, ""))
        for field in facts.release_hardening
        if field not in facts.download_lock_fields
    ]
    steps += [
        EfuseStep("post_flash", "write_protect_efuse", field, why=_PROTECT_WHY.get(field, ""))
        for field in early_protect
    ]
    steps += [
        EfuseStep(
            "post_flash", "burn_efuse", field, value=1,
            why="lock the ROM download mode; after this esptool cannot reach the chip",
        )
        for field in locks
    ]
    steps += [
        EfuseStep(
            "post_flash", "write_protect_efuse", field,
            why=_PROTECT_WHY.get(field, "") + " (also locks the download-mode bit, so last)",
        )
        for field in facts.write_protect_after_download_lock
    ]
    return steps


_HARDENING_WHY = {
    "DISABLE_DL_ENCRYPT": "the ROM download mode may not use the flash-encryption hardware",
    "DISABLE_DL_DECRYPT": "the ROM download mode may not read flash decrypted",
    "DISABLE_DL_CACHE": "the ROM download mode may not use the flash cache",
    "JTAG_DISABLE": "disable JTAG for good",
    "CONSOLE_DEBUG_DISABLE": "disable the ROM BASIC console",
    "DIS_DOWNLOAD_ICACHE": "the download mode may not use the instruction cache",
    "DIS_DOWNLOAD_DCACHE": "the download mode may not use the data cache",
    "DIS_PAD_JTAG": "disable JTAG on the pads for good",
    "DIS_USB_JTAG": "disable the USB-JTAG bridge",
    "DIS_DIRECT_BOOT": "disable legacy direct boot, which skips secure boot",
    "DIS_DOWNLOAD_MANUAL_ENCRYPT": "the download mode may not use the flash-encryption "
    "hardware",
}

_PROTECT_WHY = {
    "RD_DIS": "nobody may read-protect the secure boot digest later (denial of service)",
    "FLASH_CRYPT_CNT": "freeze the crypt counter: flash encryption can never be turned off",
    "SPI_BOOT_CRYPT_CNT": "freeze the crypt counter: flash encryption can never be turned off",
}
