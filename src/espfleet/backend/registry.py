"""The fleet registry: devices and their certificates, in any SQLAlchemy database.

``Registry.open(url)`` creates or upgrades the schema with the packaged Alembic
migrations (no alembic.ini on the user's side), then every method runs in its own
transaction: a failure leaves no row behind. Methods return frozen records
(:class:`DeviceRecord`, :class:`CertRecord`), never live ORM objects.

Used by: ``espfleet cert`` (issue/revoke/list), ``espfleet provision``
(``record_provisioned``), ``espfleet flash`` (``add_device``, ``update_device``), the
backend (renewal, recovery, audits).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from espfleet.backend.models import (
    CERTIFICATE_KINDS,
    CERTIFICATE_STATUSES,
    DEVICE_MODES,
    DEVICE_STATUSES,
    Certificate,
    Device,
)
from espfleet.errors import InputError, RegistryError

__all__ = ["CertRecord", "DeviceRecord", "Registry", "head_revision", "upgrade"]

_MIGRATIONS = Path(__file__).resolve().parent / "migrations"
_UPDATABLE = ("chip", "mac", "status", "mode", "recovery_secret_hash", "bundle_sha256")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class DeviceRecord:
    device_id: str
    chip: str
    mac: str | None
    status: str
    mode: str | None
    recovery_secret_hash: str | None
    bundle_sha256: str | None
    created_at: dt.datetime
    updated_at: dt.datetime


@dataclass(frozen=True)
class CertRecord:
    serial: str
    device_id: str
    kind: str
    status: str
    not_before: dt.datetime
    not_after: dt.datetime
    fingerprint_sha256: str
    revoked_at: dt.datetime | None
    revocation_reason: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            f.name: (v.isoformat() if isinstance(v, dt.datetime) else v)
            for f in fields(self)
            for v in [getattr(self, f.name)]
        }


def _device_record(row: Device) -> DeviceRecord:
    return DeviceRecord(**{f.name: getattr(row, f.name) for f in fields(DeviceRecord)})


def _cert_record(row: Certificate) -> CertRecord:
    return CertRecord(**{f.name: getattr(row, f.name) for f in fields(CertRecord)})


def _check(value: str | None, allowed: tuple[str, ...], what: str) -> None:
    if value is not None and value not in allowed:
        raise InputError(f"{what} {value!r} is not one of {', '.join(allowed)}")


def _alembic_config(connection: Any) -> Config:
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(_alembic_config(None)).get_current_head()
    assert head is not None
    return head


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Run pending migrations up to ``revision`` (idempotent)."""
    with engine.begin() as connection:
        current = MigrationContext.configure(connection).get_current_revision()
        script = ScriptDirectory.from_config(_alembic_config(connection))
        if current is not None and current not in {s.revision for s in script.walk_revisions()}:
            raise RegistryError(
                f"the registry database is at schema revision {current}, which this version "
                "of espfleet does not know: upgrade espfleet"
            )
        command.upgrade(_alembic_config(connection), revision)


def _safe(url: str) -> str:
    """``url`` without its password, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return "<unparsable URL>"


def _make_engine(url: str) -> Engine:
    try:
        if url.startswith("sqlite"):
            engine = create_engine(url, connect_args={"timeout": 30})
            event.listen(engine, "connect", _sqlite_pragmas)
            return engine
        return create_engine(url, pool_pre_ping=True)
    except (SQLAlchemyError, ImportError, ValueError) as error:
        raise RegistryError(
            f"cannot open the registry {_safe(url)}: {error}; check [registry] url in fleet.toml"
        ) from None


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """Foreign keys on; WAL with synchronous=NORMAL: a commit costs ~1 ms instead of two
    fsyncs (~30 ms), and a power cut can lose the last commits but never corrupts the file.
    The CRL is written (and fsynced) before a revocation commits, so it fails closed."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


class Registry:
    """Devices and certificates. Open with :meth:`open`; close with :meth:`close`."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    @classmethod
    def open(cls, url: str, *, migrate: bool = True) -> Registry:
        engine = _make_engine(url)
        try:
            if migrate:
                upgrade(engine)
        except SQLAlchemyError as error:
            engine.dispose()
            if engine.dialect.name == "sqlite":  # a local file: its error names no secret
                raise RegistryError(
                    f"cannot open the registry {_safe(url)}: {getattr(error, 'orig', error)}; "
                    "if the file is damaged, restore it from a backup"
                ) from None
            raise RegistryError(
                f"cannot open the registry {_safe(url)}: {type(error).__name__}; check that "
                "the database is reachable and [registry] url in fleet.toml"
            ) from None
        except BaseException:
            engine.dispose()
            raise
        return cls(engine)

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @property
    def engine(self) -> Engine:
        return self._engine

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """One transaction; database errors become :class:`RegistryError`."""
        try:
            with Session(self._engine, expire_on_commit=False) as session, session.begin():
                yield session
        except IntegrityError as error:
            raise RegistryError(
                f"the registry refused the change (conflicting record): {error.orig}"
            ) from None
        except SQLAlchemyError as error:
            raise RegistryError(f"registry operation failed: {error}") from None

    # -- devices ---------------------------------------------------------------

    def add_device(
        self,
        device_id: str,
        *,
        chip: str,
        mac: str | None = None,
        status: str = "allocated",
        mode: str | None = None,
        now: dt.datetime | None = None,
    ) -> DeviceRecord:
        _check(status, DEVICE_STATUSES, "device status")
        _check(mode, DEVICE_MODES, "device mode")
        stamp = now or _now()
        with self.transaction() as session:
            if session.get(Device, device_id) is not None:
                raise InputError(f"device {device_id} is already in the registry")
            row = Device(
                device_id=device_id, chip=chip, mac=mac, status=status, mode=mode,
                created_at=stamp, updated_at=stamp,
            )
            session.add(row)
            session.flush()
            return _device_record(row)

    def get_device(self, device_id: str) -> DeviceRecord | None:
        with self.transaction() as session:
            row = session.get(Device, device_id)
            return _device_record(row) if row is not None else None

    def update_device(self, device_id: str, /, **changes: Any) -> DeviceRecord:
        unknown = set(changes) - set(_UPDATABLE)
        if unknown:
            raise InputError(
                f"cannot update device field(s) {', '.join(sorted(unknown))}: "
                f"updatable are {', '.join(_UPDATABLE)}"
            )
        _check(changes.get("status"), DEVICE_STATUSES, "device status")
        _check(changes.get("mode"), DEVICE_MODES, "device mode")
        with self.transaction() as session:
            row = session.get(Device, device_id)
            if row is None:
                raise InputError(f"device {device_id} is not in the registry")
            for name, value in changes.items():
                setattr(row, name, value)
            row.updated_at = _now()
            session.flush()
            return _device_record(row)

    def list_devices(self, *, status: str | None = None) -> list[DeviceRecord]:
        with self.transaction() as session:
            query = select(Device).order_by(Device.device_id)
            if status is not None:
                query = query.where(Device.status == status)
            return [_device_record(row) for row in session.scalars(query)]

    def record_provisioned(
        self,
        device_id: str,
        *,
        chip: str,
        mac: str,
        mode: str,
        recovery_secret_hash: str,
        bundle_sha256: str,
        serial: str,
        not_before: dt.datetime,
        not_after: dt.datetime,
        fingerprint_sha256: str,
    ) -> DeviceRecord:
        """One transaction for a built bundle: the device (created or updated) becomes
        ``provisioned`` with its bundle hash, and the bundle's certificate becomes its
        active one (a previous active device certificate is ``superseded``)."""
        _check(mode, DEVICE_MODES, "device mode")
        stamp = _now()
        with self.transaction() as session:
            row = session.get(Device, device_id)
            if row is None:
                row = Device(device_id=device_id, chip=chip, created_at=stamp)
                session.add(row)
            row.mac = mac
            row.status = "provisioned"
            row.mode = mode
            row.recovery_secret_hash = recovery_secret_hash
            row.bundle_sha256 = bundle_sha256
            row.updated_at = stamp
            for old in self._active(session, device_id):
                old.status = "superseded"
            session.add(Certificate(
                serial=serial, device_id=device_id, kind="device", status="active",
                not_before=not_before, not_after=not_after,
                fingerprint_sha256=fingerprint_sha256,
            ))
            session.flush()
            return _device_record(row)

    # -- certificates ----------------------------------------------------------

    def add_certificate(
        self,
        *,
        serial: str,
        device_id: str,
        not_before: dt.datetime,
        not_after: dt.datetime,
        fingerprint_sha256: str,
        kind: str = "device",
        chip: str | None = None,
        mac: str | None = None,
        supersede: bool = False,
    ) -> CertRecord:
        """Record an issued certificate as the active one of ``device_id``.

        The device row is created (status ``allocated``) when ``chip`` is given and the
        device is unknown. An existing active certificate of the same kind is an error
        unless ``supersede``, which marks it ``superseded`` in the same transaction (an
        expired one is superseded without asking).
        """
        _check(kind, CERTIFICATE_KINDS, "certificate kind")
        with self.transaction() as session:
            device = session.get(Device, device_id)
            if device is None:
                if chip is None:
                    raise InputError(f"device {device_id} is not in the registry")
                stamp = _now()
                session.add(
                    Device(
                        device_id=device_id, chip=chip, mac=mac, status="allocated",
                        created_at=stamp, updated_at=stamp,
                    )
                )
            current = self._active(session, device_id, kind)
            live = [row for row in current if row.not_after > _now()]
            if live and not supersede:
                raise InputError(
                    f"{device_id} already has an active certificate (serial {live[0].serial}, "
                    f"valid until {live[0].not_after:%Y-%m-%d}): pass --renew to replace it"
                )
            for old in current:  # an expired one is replaced without --renew
                old.status = "superseded"
            row = Certificate(
                serial=serial, device_id=device_id, kind=kind, status="active",
                not_before=not_before, not_after=not_after,
                fingerprint_sha256=fingerprint_sha256,
            )
            session.add(row)
            session.flush()
            return _cert_record(row)

    @staticmethod
    def _active(session: Session, device_id: str, kind: str = "device") -> list[Certificate]:
        query = select(Certificate).where(
            Certificate.device_id == device_id,
            Certificate.status == "active",
            Certificate.kind == kind,
        )
        return list(session.scalars(query.order_by(Certificate.not_after.desc())))

    @staticmethod
    def _unexpired(session: Session, device_id: str, at: dt.datetime) -> list[Certificate]:
        """Certificates of ``device_id`` a verifier would still accept at ``at``, CRL aside."""
        query = select(Certificate).where(
            Certificate.device_id == device_id,
            Certificate.status.in_(("active", "superseded")),
            Certificate.not_after > at,
        )
        return list(session.scalars(query.order_by(Certificate.not_after.desc())))

    def active_certificate(
        self, device_id: str, *, at: dt.datetime | None = None
    ) -> CertRecord | None:
        """The device's active, unexpired certificate (latest expiry first), if any."""
        moment = at or _now()
        with self.transaction() as session:
            for row in self._active(session, device_id):
                if row.not_before <= moment < row.not_after:
                    return _cert_record(row)
            return None

    def get_certificate(self, serial: str) -> CertRecord | None:
        with self.transaction() as session:
            row = session.get(Certificate, serial)
            return _cert_record(row) if row is not None else None

    def certificates(
        self,
        *,
        expiring_within: dt.timedelta | None = None,
        status: str | None = None,
        device_id: str | None = None,
        at: dt.datetime | None = None,
    ) -> list[CertRecord]:
        """Certificates, soonest expiry first. ``expiring_within`` keeps active ones whose
        ``not_after`` is within that span from ``at`` (already expired ones included)."""
        _check(status, CERTIFICATE_STATUSES, "certificate status")
        query = select(Certificate).order_by(Certificate.not_after, Certificate.serial)
        if status is not None:
            query = query.where(Certificate.status == status)
        if device_id is not None:
            query = query.where(Certificate.device_id == device_id)
        if expiring_within is not None:
            query = query.where(
                Certificate.status == "active",
                Certificate.not_after <= (at or _now()) + expiring_within,
            )
        with self.transaction() as session:
            return [_cert_record(row) for row in session.scalars(query)]

    def revoke(
        self,
        target: str,
        reason: str = "unspecified",
        *,
        now: dt.datetime | None = None,
        before_commit: Callable[[Sequence[CertRecord]], None] | None = None,
    ) -> list[CertRecord]:
        """Revoke a certificate by serial, or by device id every unexpired certificate of
        the device, superseded ones included (a renewed device's old certificate still
        verifies until it expires; a stolen device may hold it), which also marks the
        device ``revoked``. ``before_commit`` receives ALL revoked certificates (for the
        CRL) inside the transaction; if it raises, nothing changes."""
        stamp = now or _now()
        with self.transaction() as session:
            device = session.get(Device, target)
            if device is not None:
                rows = self._unexpired(session, target, stamp)
                if not rows and device.status == "revoked":
                    raise InputError(f"device {target} is already revoked")
                device.status = "revoked"
                device.updated_at = stamp
            else:
                row = session.get(Certificate, target)
                if row is None:
                    raise InputError(
                        f"{target!r} is neither a device id nor a certificate serial in the "
                        "registry: check it with `espfleet cert list`"
                    )
                if row.status == "revoked":
                    raise InputError(f"certificate {target} is already revoked")
                rows = [row]
            for row in rows:
                row.status = "revoked"
                row.revoked_at = stamp
                row.revocation_reason = reason
            session.flush()
            changed = [_cert_record(row) for row in rows]
            if before_commit is not None:
                revoked = session.scalars(
                    select(Certificate).where(Certificate.status == "revoked")
                )
                before_commit([_cert_record(row) for row in revoked])
            return changed
