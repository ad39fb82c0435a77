"""Registry schema (SQLAlchemy 2 typed ORM).

The schema is owned by the Alembic migrations in ``backend/migrations/versions``; these
models must match them. To grow the schema: add a model (or column) here AND a new
migration file ``NNNN_<what>.py`` whose ``down_revision`` is the previous head.

Status and kind columns are short strings validated in Python (the allowed values are
the ``*_STATUSES`` tuples), so a later issue can add a state without a table rebuild.
Times are stored as UTC and always come back timezone-aware.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import DateTime, ForeignKey, Index, String, TypeDecorator
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

__all__ = [
    "CERTIFICATE_KINDS",
    "CERTIFICATE_STATUSES",
    "DEVICE_MODES",
    "DEVICE_STATUSES",
    "Base",
    "Certificate",
    "Device",
    "UtcDateTime",
]

#: ``flashing``: `espfleet flash` is about to burn (or began burning) the chip's eFuses, so
#: the chip may hold the bundle's flash-encryption key: the bundle must never be rebuilt.
DEVICE_STATUSES = (
    "allocated", "provisioned", "flashing", "flashed", "active", "revoked", "decommissioned",
)
DEVICE_MODES = ("release", "development")
CERTIFICATE_STATUSES = ("active", "revoked", "superseded")
CERTIFICATE_KINDS = ("device", "server", "ca")


class UtcDateTime(TypeDecorator[dt.datetime]):
    """A datetime stored as naive UTC (SQLite has no time zones) and read back as aware UTC."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("registry times must be timezone-aware")
        return value.astimezone(dt.UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        assert isinstance(value, dt.datetime)
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


class Base(DeclarativeBase):
    pass


class Device(Base):
    __tablename__ = "devices"

    device_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    chip: Mapped[str] = mapped_column(String(16))
    mac: Mapped[str | None] = mapped_column(String(12), unique=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    mode: Mapped[str | None] = mapped_column(String(16))
    recovery_secret_hash: Mapped[str | None] = mapped_column(String(255))
    bundle_sha256: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime())
    updated_at: Mapped[dt.datetime] = mapped_column(UtcDateTime())

    certificates: Mapped[list[Certificate]] = relationship(back_populates="device")


class Certificate(Base):
    __tablename__ = "certificates"
    __table_args__ = (Index("ix_certificates_device_status", "device_id", "status"),)

    serial: Mapped[str] = mapped_column(String(40), primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.device_id"))
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    not_before: Mapped[dt.datetime] = mapped_column(UtcDateTime())
    not_after: Mapped[dt.datetime] = mapped_column(UtcDateTime(), index=True)
    fingerprint_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime())
    revocation_reason: Mapped[str | None] = mapped_column(String(32))

    device: Mapped[Device] = relationship(back_populates="certificates")
