"""Pre-flight checks of ``espfleet flash``: pure functions over what the chip reported.

Nothing here talks to a port. Given the bundle's expectations, the chip's identity
and a snapshot of its eFuses, :func:`check_identity` refuses the wrong chip, and
:func:`assess_steps` decides, for every eFuse step of the plan, whether the chip
already holds it (skip it: never burn twice) or still needs it, and refuses a chip
whose eFuses conflict with the plan before anything irreversible happens.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from espfleet.chips import chip_facts
from espfleet.device_id import device_id_for, format_mac
from espfleet.errors import FlashError
from espfleet.provisioning.efuse_plan import EfusePlan, EfuseStep
from espfleet.provisioning.espefuse_driver import EfuseState
from espfleet.provisioning.esptool_driver import ChipIdentity
from espfleet.provisioning.macs import LOCAL_PREFIX

__all__ = ["StepCheck", "assess_steps", "check_identity", "pending"]

#: Key purposes that mean "no key here".
_FREE_PURPOSES = ("USER", "0", "None", "")


@dataclass(frozen=True)
class StepCheck:
    """One plan step and whether the chip already holds it."""

    step: EfuseStep
    done: bool
    note: str = ""


def check_identity(
    *,
    device_id: str,
    chip: str,
    mac: bytes,
    identity: ChipIdentity,
    port: str,
    flash_size: str | None = None,
) -> None:
    """Refuse a chip that is not the one the bundle was built for.

    ``flash_size`` is the bundle's: a smaller flash than the images' headers and
    partition table claim makes ESP-IDF's app refuse to start, which on a locked release
    device can never be fixed.
    """
    facts = chip_facts(chip)
    if identity.chip != facts.name:
        raise FlashError(
            f"wrong chip on {port}: {device_id}'s bundle is for an {facts.name} but the chip "
            f"is an {identity.chip}: connect the {facts.name} board, or provision a bundle for "
            f"this chip with `espfleet provision`; nothing was changed"
        )
    if identity.revision < facts.sb_v2_min_revision:
        need = f"v{facts.sb_v2_min_revision // 100}.{facts.sb_v2_min_revision % 100}"
        raise FlashError(
            f"the {facts.name} on {port} is revision {identity.revision_text}, below {need} "
            f"which Secure Boot V2 needs: use a {facts.name} of revision {need} or newer; "
            "nothing was changed"
        )
    have, want = _size_bytes(identity.flash_size), _size_bytes(flash_size)
    if have is not None and want is not None and have < want:
        raise FlashError(
            f"the chip on {port} has {identity.flash_size} of flash, but {device_id}'s "
            f"bundle is built for {flash_size}: its app would refuse to start (flash smaller "
            "than the image header says), and a locked device could never be fixed. Use a "
            f"{flash_size} module, or provision this one with --flash-size "
            f"{identity.flash_size}; nothing was changed"
        )
    if identity.mac != mac and mac[:3] == LOCAL_PREFIX:
        own = device_id_for(identity.chip, identity.mac)
        raise FlashError(
            f"{device_id}'s bundle was made by `espfleet provision --count` for an allocated "
            f"MAC ({format_mac(mac)}) that no chip has from the factory "
            "(only a virtual chip created with `espfleet vdev create --mac`); the chip on "
            f"{port} is {own} (MAC {identity.mac_text}): provision real boards by their own "
            f"MAC (`espfleet provision --device-id {own}`, or a --macs list); nothing was "
            "changed"
        )
    if identity.mac != mac:
        raise FlashError(
            f"the chip on {port} has MAC {identity.mac_text}, not {device_id}'s "
            f"{format_mac(mac)}: this is another device; flash the bundle made for it "
            f"(espfleet flash {device_id_for(identity.chip, identity.mac)}) or provision "
            "one with `espfleet provision --macs`; nothing was changed"
        )


def _size_bytes(text: str | None) -> int | None:
    """``"4MB"`` -> 4194304 (esptool's and the manifest's notation); None if unknown."""
    match = re.fullmatch(r"(\d+)\s*([KM])B", (text or "").strip().upper())
    if match is None:
        return None
    return int(match[1]) << (20 if match[2] == "M" else 10)


def assess_steps(
    plan: EfusePlan, state: EfuseState, *, digest: bytes, resuming: bool
) -> tuple[StepCheck, ...]:
    """Decide per step: already done, or to do. Raises :class:`FlashError` on a conflict.

    ``resuming`` means this host's journal records that an earlier ``espfleet flash``
    of this very chip started burning the plan; only then is a used key block taken
    for this device's key (a read-protected key cannot be compared).
    """
    facts = chip_facts(plan.chip)
    _check_secure_boot(plan, state, digest)
    counter = state.get(facts.crypt_cnt_field)
    if bin(counter.as_int).count("1") % 2 == 1 and not resuming:
        raise FlashError(
            f"eFuse {facts.crypt_cnt_field} is already {counter.as_int:#x} (an odd number of "
            "bits set): flash encryption is already on with a key espfleet did not burn, so "
            "this device's pre-encrypted images would not decrypt. Use a fresh chip; nothing "
            "was changed"
        )
    checks = tuple(_assess(step, state, digest=digest, resuming=resuming) for step in plan.steps)
    for check in checks:
        if not check.done and check.step.purpose == facts.fe_key_purpose.get(64):
            _check_second_key_block(check.step, state, facts.fe_key_blocks)
    return checks


def pending(checks: Sequence[StepCheck], phase: str) -> tuple[EfuseStep, ...]:
    return tuple(c.step for c in checks if c.step.phase == phase and not c.done)


def _check_secure_boot(plan: EfusePlan, state: EfuseState, digest: bytes) -> None:
    facts = chip_facts(plan.chip)
    if state.get(facts.sb_enable_field).is_blank:
        return
    slots = [s.target for s in plan.steps if s.action == "burn_key_digest"]
    if not slots or any(state.get(slot).raw == digest for slot in slots):
        return
    raise FlashError(
        f"secure boot is already on ({facts.sb_enable_field}) with another public-key "
        "digest: this chip only boots images signed by someone else's key, and espfleet "
        "cannot change that. Use a fresh chip; nothing was changed"
    )


def _assess(step: EfuseStep, state: EfuseState, *, digest: bytes, resuming: bool) -> StepCheck:
    target = state.get(step.target)
    if step.action == "write_protect_efuse":
        return StepCheck(step, done=not target.writeable)
    if step.action == "read_protect_efuse":
        return StepCheck(step, done=not target.readable)
    if step.action == "burn_efuse":
        return _assess_field(step, state)
    return _assess_key(step, state, digest=digest, resuming=resuming)


def _assess_field(step: EfuseStep, state: EfuseState) -> StepCheck:
    target = state.get(step.target)
    want = step.value or 0
    have = target.as_int
    if have == want:
        return StepCheck(step, done=True, note=f"already {have:#x}")
    if have & ~want:
        raise FlashError(
            f"eFuse {step.target} is already {have:#x}, and eFuse bits cannot be cleared to "
            f"reach the plan's {want:#x}: this chip was configured by something else. Use a "
            "fresh chip; nothing was changed"
        )
    if not target.writeable:
        raise FlashError(
            f"eFuse {step.target} is {have:#x} and write-protected, so the plan's {want:#x} "
            "can never be burned. Use a fresh chip; nothing was changed"
        )
    return StepCheck(step, done=False)


def _purpose_used(state: EfuseState, block: str) -> tuple[str | None, bool]:
    purpose = state.purpose_of(block)
    return purpose, purpose is not None and purpose not in _FREE_PURPOSES


def _check_second_key_block(step: EfuseStep, state: EfuseState, blocks: Sequence[str]) -> None:
    """A 64-byte XTS-AES-256 key takes the plan's block and the next one (espefuse's
    choice); that one must be free too, or the key and the digest would collide."""
    index = blocks.index(step.target) if step.target in blocks else -1
    if 0 <= index < len(blocks) - 1:
        second = blocks[index + 1]
        field = state.get(second)
        _, used = _purpose_used(state, second)
        if used or not field.is_blank or not field.readable or not field.writeable:
            raise FlashError(
                f"key block {second} is already used: the XTS-AES-256 key needs {step.target} "
                f"and {second} blank. Use a fresh chip; nothing was changed"
            )


def _assess_key(step: EfuseStep, state: EfuseState, *, digest: bytes, resuming: bool) -> StepCheck:
    block = state.get(step.target)
    purpose, purpose_used = _purpose_used(state, step.target)
    ours_purpose = purpose is None or purpose.startswith(step.purpose or "")
    if step.action == "burn_key_digest":
        if block.readable and block.raw == digest and ours_purpose:
            return StepCheck(step, done=True, note="digest already burned")
        used = purpose_used or not block.is_blank or not block.readable
    else:
        used = purpose_used or not block.is_blank or not block.readable or not block.writeable
        if used and resuming and ours_purpose and not block.readable:
            return StepCheck(step, done=True, note="key burned by the earlier run")
    if used:
        what = f" (purpose {purpose})" if purpose_used else ""
        raise FlashError(
            f"key block {step.target} is already used{what}: {step.describe()} needs a blank "
            "block. This chip holds a key espfleet did not burn; use a fresh chip (if an "
            "interrupted `espfleet flash` of this device ran on another host, copy its "
            "bundles/<device-id>/flash-journal.json here and re-run). Nothing was changed"
        )
    if not block.writeable:
        raise FlashError(
            f"key block {step.target} is write-protected: it can never take "
            f"{step.source}. Use a fresh chip; nothing was changed"
        )
    return StepCheck(step, done=False)
