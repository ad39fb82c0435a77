"""Where an eFuse audit gets its snapshot: an ``espefuse --virt`` file or a live port.

Both go through the real espefuse (:class:`~espfleet.provisioning.espefuse_driver.EfuseDriver`),
so the audit sees exactly what espefuse would show. Reading never burns: a file is
read from a private copy, so the audit cannot change it even if espefuse rewrites it.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from espfleet.chips import chip_facts
from espfleet.errors import AuditError, FlashError, InputError
from espfleet.provisioning.espefuse_driver import EfuseDriver, EfuseState, silenced_esptool

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


def read_efuse_port(chip: str, port: str, *, baud: int = 115200) -> EfuseState:
    """Read a connected chip's eFuses over ``port`` (serial, ``rfc2217://``, ``socket://``).

    Uses ``--before no-reset`` so a virtual device or an already-in-download-mode
    board is not reset.
    """
    facts = chip_facts(chip)
    import espefuse
    import esptool

    try:
        with silenced_esptool():
            esp = espefuse.get_esp(port=port, baud=baud, chip=facts.name, before="no-reset")
            try:
                return EfuseDriver(esp, facts.name).read_state()
            finally:
                port_obj = getattr(esp, "_port", None)
                if port_obj is not None:
                    port_obj.close()
    except (esptool.FatalError, OSError, FlashError) as error:
        locked = "secure download mode" in str(error).lower()
        raise AuditError(
            f"could not read the eFuses of the {facts.name} on {port}: "
            + (
                "the chip is in Secure Download Mode, which refuses eFuse reads (that lock "
                "is itself the release posture's last step); audit the eFuse file recorded "
                "when it was flashed, or read them before the download lock"
                if locked else
                f"{error}. Check the port and that the chip is in download mode "
                "(`--before no-reset` is used); a chip with UART download disabled cannot "
                "be audited over serial"
            )
        ) from error
