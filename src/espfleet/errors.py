"""The one exception root of espfleet.

Every error a user can meet is an :class:`EspfleetError` whose message says what
happened and what to do next. Library code raises these; only :mod:`espfleet.cli`
turns them into exit codes (see ``espfleet.cli._errors``).

Two families matter to the CLI:

* :class:`InputError` -- the user gave something wrong (bad id, bad file, wrong
  passphrase). Exit code 2.
* everything else -- an operation failed (a device did not answer, a check
  refused). Exit code 1.
"""

from __future__ import annotations

__all__ = [
    "AuditError",
    "DeviceError",
    "EspfleetError",
    "FlashError",
    "FormatError",
    "InputError",
    "PassphraseError",
    "PkiError",
    "ProvisioningError",
    "RegistryError",
    "SigningError",
    "WorkspaceError",
    "WorkspaceExistsError",
]


class EspfleetError(Exception):
    """Root of every espfleet error. The message is shown to the user as is."""


class InputError(EspfleetError):
    """Something the user supplied is invalid. The CLI exits with 2."""


class FormatError(InputError):
    """Bytes that do not decode as the expected on-flash format.

    Messages name the offset and what was wrong, e.g.
    ``"partition table entry 3 at offset 0x60: bad magic 0xffff, expected 0x50aa"``.
    """

    def __init__(self, message: str, offset: int | None = None) -> None:
        super().__init__(message)
        self.offset = offset


class PassphraseError(InputError):
    """A passphrase was missing or could not decrypt a key."""


class WorkspaceError(EspfleetError):
    """The fleet workspace is missing, incomplete, tampered with or already exists."""


class WorkspaceExistsError(WorkspaceError, InputError):
    """``init`` was pointed at an existing workspace or a non-empty directory (bad input)."""


class PkiError(EspfleetError):
    """A certificate, CSR, CRL or CA operation failed."""


class RegistryError(EspfleetError):
    """The device/certificate registry refused or failed an operation."""


class SigningError(EspfleetError):
    """Secure boot signing or signature verification failed."""


class ProvisioningError(EspfleetError):
    """Building a device bundle or its eFuse plan failed."""


class FlashError(EspfleetError):
    """Talking to a chip through esptool/espefuse failed, or a pre-flight check refused."""


class DeviceError(EspfleetError):
    """The virtual ESP32 refused an operation, as the silicon would."""


class AuditError(EspfleetError):
    """An audit could not run (not: an audit that found problems)."""
