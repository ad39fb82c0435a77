"""Where an eFuse audit gets its snapshot: an ``espefuse --virt`` file or a live port.

Both go through the real espefuse (:class:`~espfleet.provisioning.espefuse_driver.EfuseDriver`),
so the audit sees exactly what espefuse would show. Reading never burns: a file is
read from a private copy, so the audit cannot change it even if espefuse rewrites it.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from espfleet.chips import ChipFacts, chip_facts
from espfleet.errors import AuditError, FlashError, InputError
from espfleet.provisioning.espefuse_driver import (
    EfuseDriver,
    EfuseField,
    EfuseState,
    silenced_esptool,
)

__all__ = ["read_efuse_file", "read_efuse_port"]


def read_efuse_file(chip: str, path: Path) -> EfuseState:
    """The eFuses stored in an ``espefuse --virt`` file (or ``espfleet vdev efuse``)."""
    facts = chip_facts(chip)
    try:
        size = path.stat().st_size
    except OSError as error:
        raise InputError(f"cannot read eFuse file {path}: {error.strerror}") from None
    if size != facts.efuse_file_size:
        raise InputError(
            f"{path} is {size} bytes, but an {facts.name} eFuse file (espefuse --virt) is "
            f"{facts.efuse_file_size}: check --chip, or the file is not an eFuse image"
        )
    import esptool

    with tempfile.TemporaryDirectory(prefix="espfleet-efuse-") as tmp:
        copy = Path(tmp) / path.name
        shutil.copyfile(path, copy)
        try:
            with silenced_esptool():
                return EfuseDriver.virtual(facts.name, copy).read_state()
        except (esptool.FatalError, ValueError, KeyError) as error:
            raise InputError(
                f"espefuse cannot decode {path} as {facts.name} eFuses: {error}"
            ) from error


def read_efuse_port(
    chip: str, port: str, *, baud: int = 115200
) -> tuple[EfuseState, tuple[str, ...]]:
    """Read a connected chip's eFuses over ``port`` (serial, ``rfc2217://``, ``socket://``).

    Returns the snapshot and what it could not verify. espefuse reads every field; a
    chip in Secure Download Mode refuses that, and then the ROM's GET_SECURITY_INFO
    (crypt counter, key purposes, secure boot, revocations, JTAG and cache flags) is
    the snapshot: fields it does not report are filled with the required value and
    named in the second element, so the report says what was assumed.
    Uses ``--before no-reset``, so a virtual device or a board already in download
    mode is not reset.
    """
    facts = chip_facts(chip)
    import espefuse
    import esptool

    try:
        with silenced_esptool():
            esp = espefuse.get_esp(port=port, baud=baud, chip=facts.name, before="no-reset")
            try:
                try:
                    return EfuseDriver(esp, facts.name).read_state(), ()
                except FlashError as error:
                    if "secure download mode" not in str(error).lower():
                        raise
                    return _from_security_info(facts, esp.get_security_info(cache=False))
            finally:
                port_obj = getattr(esp, "_port", None)
                if port_obj is not None:
                    port_obj.close()
    except (esptool.FatalError, OSError, FlashError) as error:
        if "wrong chip argument" in str(error).lower():  # esptool read the chip's magic
            raise InputError(
                f"the chip on {port} is not an {facts.name} (esptool: "
                f"{str(error).rstrip('?. ')}): pass its family as --chip"
            ) from error
        raise AuditError(
            f"could not read the eFuses of the {facts.name} on {port}: {error}. Check the "
            "port and that the chip is in download mode (`--before no-reset` is used); a "
            "chip with UART download disabled cannot be audited over serial"
        ) from error


#: GET_SECURITY_INFO flag bit -> eFuse (esptool's SECURITY_INFO_FLAG_MAP, ROM order).
_SECURITY_FLAGS = {
    0: "SECURE_BOOT_EN",
    2: "ENABLE_SECURITY_DOWNLOAD",
    3: "SECURE_BOOT_KEY_REVOKE0",
    4: "SECURE_BOOT_KEY_REVOKE1",
    5: "SECURE_BOOT_KEY_REVOKE2",
    7: "DIS_PAD_JTAG",
    9: "DIS_DOWNLOAD_DCACHE",
    10: "DIS_DOWNLOAD_ICACHE",
}
_KEY_BLOCKS = 6


def _key_purpose_names(chip: str) -> dict[int, str]:
    import importlib

    fields = importlib.import_module(f"espefuse.efuse.{chip}.fields")
    return {number: name for name, number, *_ in fields.EfuseKeyPurposeField.KEY_PURPOSES}


def _from_security_info(
    facts: ChipFacts, info: Mapping[str, Any]
) -> tuple[EfuseState, tuple[str, ...]]:
    """An eFuse snapshot from GET_SECURITY_INFO, with the fields it cannot show set to
    their required release values and listed as unverified."""
    flags = int(info["flags"])
    fields: dict[str, EfuseField] = {}
    unverified: list[str] = []

    def put(name: str, raw: int | bytes, value: str = "", *, readable: bool = True,
            writeable: bool = True) -> None:
        fields[name] = EfuseField(name, raw, value or str(raw), readable, writeable)

    put(facts.crypt_cnt_field, int(info["flash_crypt_cnt"]), writeable=False)
    put(facts.rd_dis_field, 0, writeable=False)
    unverified += [f"write protection of {n}" for n in facts.release_write_protect]
    for bit, name in _SECURITY_FLAGS.items():
        put(name, (flags >> bit) & 1)
    for name in (*facts.release_hardening, *facts.download_lock_fields, facts.sb_enable_field):
        if name not in fields:
            lock = name in facts.download_lock_fields  # it answered: download mode is open
            put(name, 0 if lock else 1)
            if not lock:
                unverified.append(name)
    names = _key_purpose_names(facts.name)
    purposes = list(info["key_purposes"])[:_KEY_BLOCKS]
    purpose_fields: dict[str, str] = {}
    for number, purpose in enumerate(purposes):
        field = f"KEY_PURPOSE_{number}"
        put(field, int(purpose), names.get(int(purpose), str(purpose)))
        block = f"BLOCK_KEY{number}"
        put(block, b"", "?", readable=False, writeable=False)
        purpose_fields[block] = field
    unverified += ["read/write protection of the key blocks",
                   "the secure boot digest values (only their slots are reported)",
                   "the chip revision"]
    state = EfuseState(chip=facts.name, revision=facts.sb_v2_min_revision, fields=fields,
                       key_purpose_fields=purpose_fields)
    return state, tuple(unverified)
