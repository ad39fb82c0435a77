"""The workspace's issuing CA: pure issuing plus the registry and CRL bookkeeping.

:meth:`IssuingAuthority.issue_device_cert` is the pure, cheap call (no file, no
database); :meth:`IssuingAuthority.record` writes the registry; :meth:`revoke` updates
the registry and re-signs ``pki/crl.pem`` in one step (if the CRL cannot be written
the registry change is rolled back).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

from cryptography import x509

from espfleet._io import atomic_write
from espfleet.backend.registry import CertRecord, Registry
from espfleet.device_id import parse_device_id
from espfleet.errors import InputError
from espfleet.pki.ca import CertificateAuthority, IssuedCert, format_serial, parse_serial, utcnow
from espfleet.pki.crl import REVOCATION_REASONS, RevokedEntry, crl_number, load_crl, verify_crl
from espfleet.pki.store import read_bytes

__all__ = ["IssuingAuthority"]


@dataclass(frozen=True)
class IssuingAuthority(CertificateAuthority):
    """The workspace's issuing CA with its key loaded (from :meth:`Workspace.ca`): the pure
    :class:`CertificateAuthority` calls plus registry/CRL bookkeeping. Close it when done."""

    crl_path: Path = Path("pki/crl.pem")
    registry_url: str = ""
    chip: str = "esp32"
    _registry: Registry | None = field(default=None, init=False, repr=False, compare=False)

    def __enter__(self) -> IssuingAuthority:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._registry is not None:
            self._registry.close()
            object.__setattr__(self, "_registry", None)

    @property
    def authority(self) -> CertificateAuthority:
        """The pure CA without a registry handle, for forked worker processes (loaded keys
        cannot be pickled: workers inherit them by fork)."""
        names = [f.name for f in fields(CertificateAuthority)]
        return CertificateAuthority(**{name: getattr(self, name) for name in names})

    @property
    def registry(self) -> Registry:
        if self._registry is None:
            object.__setattr__(self, "_registry", Registry.open(self.registry_url))
        assert self._registry is not None
        return self._registry

    def record(self, issued: IssuedCert, *, renew: bool = False) -> CertRecord:
        """Register ``issued`` as the device's active certificate (``renew`` supersedes the
        previous one; without it an active certificate is an error)."""
        parsed = parse_device_id(issued.subject)
        return self.registry.add_certificate(
            serial=issued.serial_hex,
            device_id=issued.subject,
            not_before=issued.not_before,
            not_after=issued.not_after,
            fingerprint_sha256=issued.fingerprint_sha256,
            kind=issued.kind,
            chip=parsed.chip or self.chip,
            mac=parsed.mac.hex() if parsed.mac is not None else None,
            supersede=renew,
        )

    def resolve_serial(self, target: str) -> str:
        """``target`` as the registry key: a device id as is, a serial canonicalised."""
        if self.registry.get_device(target) is not None:
            return target
        try:
            return format_serial(parse_serial(target))
        except InputError:
            raise InputError(
                f"{target!r} is neither a device id nor a certificate serial in the registry: "
                "check it with `espfleet cert list`"
            ) from None

    def revoke(
        self, target: str, reason: str = "unspecified", *, now: dt.datetime | None = None
    ) -> list[CertRecord]:
        """Revoke by serial or device id, and publish the new CRL (pki/crl.pem)."""
        if reason not in REVOCATION_REASONS:
            raise InputError(
                f"unknown revocation reason {reason!r}: use one of {', '.join(REVOCATION_REASONS)}"
            )
        stamp = now or utcnow()
        self._current_crl()  # a damaged or foreign CRL stops us before the registry changes

        def publish(revoked: Sequence[CertRecord]) -> None:
            # read again under the registry's write lock: a concurrent revocation that
            # committed meanwhile published the CRL this one must follow (number + 1)
            atomic_write(self.crl_path, self._sign(revoked, self._current_crl(), stamp))

        return self.registry.revoke(
            self.resolve_serial(target), reason, now=stamp, before_commit=publish
        )

    def regenerate_crl(self, *, now: dt.datetime | None = None) -> bytes:
        """Re-sign the CRL from the registry (e.g. before nextUpdate) and write it."""
        stamp = now or utcnow()
        data = self._sign(self.registry.certificates(status="revoked"), self._current_crl(), stamp)
        atomic_write(self.crl_path, data)
        return data

    def crl_pem(self) -> bytes:
        return read_bytes(self.crl_path, name="pki/crl.pem")

    def _current_crl(self) -> x509.CertificateRevocationList:
        crl = load_crl(self.crl_pem(), name="pki/crl.pem")
        verify_crl(crl, self.issuing_cert)
        return crl

    def _sign(
        self,
        revoked: Sequence[CertRecord],
        current: x509.CertificateRevocationList,
        now: dt.datetime,
    ) -> bytes:
        """The next CRL: the registry's revoked certificates plus every entry of the
        current (verified) CRL. A re-signed CRL never drops a serial, so a registry row
        edited back to "active" cannot un-revoke a certificate."""
        entries = {
            int(record.serial, 16): RevokedEntry(
                serial=int(record.serial, 16),
                revoked_at=record.revoked_at or now,
                reason=record.revocation_reason or "unspecified",
            )
            for record in revoked
        }
        for listed in current:
            if listed.serial_number not in entries:
                entries[listed.serial_number] = _carried(listed)
        return self.sign_crl(list(entries.values()), number=crl_number(current) + 1, now=now)


def _carried(listed: x509.RevokedCertificate) -> RevokedEntry:
    try:
        reason = listed.extensions.get_extension_for_class(x509.CRLReason).value.reason.name
    except x509.ExtensionNotFound:
        reason = "unspecified"
    return RevokedEntry(
        serial=listed.serial_number, revoked_at=listed.revocation_date_utc, reason=reason
    )
