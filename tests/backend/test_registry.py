from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text

from espfleet.backend.registry import CertRecord, Registry, head_revision, upgrade
from espfleet.errors import InputError, RegistryError

NOW = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)
DEVICE = "esp32-24a1600a1b2c"


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'registry.db'}"


@pytest.fixture
def registry(url: str) -> Iterator[Registry]:
    with Registry.open(url) as reg:
        yield reg


def add_cert(registry: Registry, serial: str, *, days: int = 730, **kw: object) -> CertRecord:
    return registry.add_certificate(
        serial=serial,
        device_id=kw.pop("device_id", DEVICE),  # type: ignore[arg-type]
        not_before=NOW,
        not_after=NOW + dt.timedelta(days=days),
        fingerprint_sha256=serial.rjust(64, "0"),
        chip="esp32",
        **kw,  # type: ignore[arg-type]
    )


def test_schema_is_created_by_the_migration(url: str, registry: Registry) -> None:
    tables = set(inspect(registry.engine).get_table_names())
    assert {"devices", "certificates", "alembic_version"} <= tables
    with registry.engine.connect() as conn:
        assert conn.execute(text("select version_num from alembic_version")).scalar() == "0001"
    assert head_revision() == "0001"


def test_models_match_the_migrations(url: str, registry: Registry) -> None:
    """A later issue that adds a model or column without a migration fails here."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from espfleet.backend.models import Base

    with registry.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []


def test_upgrade_from_0001_to_head_is_idempotent(url: str) -> None:
    engine = create_engine(url)
    upgrade(engine, "0001")
    with Registry(engine) as reg:
        add_cert(reg, "a1")
    for _ in range(2):
        with Registry.open(url) as reg:
            assert reg.get_certificate("a1") is not None
    with create_engine(url).connect() as conn:
        assert conn.execute(text("select count(*) from alembic_version")).scalar() == 1


def test_database_from_a_newer_espfleet_is_refused(url: str) -> None:
    Registry.open(url).close()
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("update alembic_version set version_num = '9999'"))
    engine.dispose()
    with pytest.raises(RegistryError, match="upgrade espfleet"):
        Registry.open(url)


def test_devices_crud(registry: Registry) -> None:
    record = registry.add_device(DEVICE, chip="esp32", mac="24a1600a1b2c", now=NOW)
    assert record.status == "allocated" and record.created_at == NOW
    updated = registry.update_device(DEVICE, status="provisioned", mode="release")
    assert (updated.status, updated.mode) == ("provisioned", "release")
    assert updated.updated_at > NOW
    assert [d.device_id for d in registry.list_devices(status="provisioned")] == [DEVICE]
    assert registry.get_device("esp32-000000000000") is None
    with pytest.raises(InputError, match="already in the registry"):
        registry.add_device(DEVICE, chip="esp32")


def test_bad_device_updates_change_nothing(registry: Registry) -> None:
    registry.add_device(DEVICE, chip="esp32")
    with pytest.raises(InputError, match="not one of"):
        registry.update_device(DEVICE, status="exploded")
    with pytest.raises(InputError, match="cannot update"):
        registry.update_device(DEVICE, device_id="other")
    with pytest.raises(InputError, match="not in the registry"):
        registry.update_device("esp32-000000000000", status="active")
    assert registry.get_device(DEVICE).status == "allocated"  # type: ignore[union-attr]


def test_duplicate_mac_leaves_no_row(registry: Registry) -> None:
    registry.add_device(DEVICE, chip="esp32", mac="24a1600a1b2c")
    with pytest.raises(RegistryError, match="conflicting record"):
        registry.add_device("esp32s3-000000000001", chip="esp32s3", mac="24a1600a1b2c")
    assert [d.device_id for d in registry.list_devices()] == [DEVICE]


def test_active_certificate_without_renew_is_refused(registry: Registry) -> None:
    add_cert(registry, "a1")
    with pytest.raises(InputError, match="--renew"):
        add_cert(registry, "a2")
    assert registry.get_certificate("a2") is None
    add_cert(registry, "a2", supersede=True)
    assert registry.get_certificate("a1").status == "superseded"  # type: ignore[union-attr]
    assert registry.active_certificate(DEVICE, at=NOW).serial == "a2"  # type: ignore[union-attr]


def test_expired_certificate_is_not_active(registry: Registry) -> None:
    add_cert(registry, "a1", days=1)
    assert registry.active_certificate(DEVICE, at=NOW + dt.timedelta(days=2)) is None
    assert registry.certificates(
        expiring_within=dt.timedelta(days=0), at=NOW + dt.timedelta(days=2)
    )


def test_expired_certificate_is_replaced_without_renew(registry: Registry) -> None:
    registry.add_certificate(
        serial="a1",
        device_id=DEVICE,
        chip="esp32",
        not_before=NOW - dt.timedelta(days=800),
        not_after=NOW - dt.timedelta(days=70),
        fingerprint_sha256="1" * 64,
    )
    add_cert(registry, "a2", days=800)
    assert registry.get_certificate("a1").status == "superseded"  # type: ignore[union-attr]
    assert registry.active_certificate(DEVICE, at=NOW).serial == "a2"  # type: ignore[union-attr]


def test_expiring_within(registry: Registry) -> None:
    add_cert(registry, "a1", days=10)
    add_cert(registry, "b1", days=400, device_id="esp32-000000000002")
    soon = registry.certificates(expiring_within=dt.timedelta(days=30), at=NOW)
    assert [c.serial for c in soon] == ["a1"]
    assert [c.serial for c in registry.certificates()] == ["a1", "b1"]


def test_revoke_by_serial_and_by_device(registry: Registry) -> None:
    add_cert(registry, "a1")
    add_cert(registry, "b1", device_id="esp32-000000000002")
    [one] = registry.revoke("a1", "key_compromise", now=NOW)
    assert (one.status, one.revocation_reason, one.revoked_at) == ("revoked", "key_compromise", NOW)
    assert registry.get_device(DEVICE).status == "allocated"  # type: ignore[union-attr]
    registry.revoke("esp32-000000000002", "cessation_of_operation")
    assert registry.get_device("esp32-000000000002").status == "revoked"  # type: ignore[union-attr]
    with pytest.raises(InputError, match="already revoked"):
        registry.revoke("a1")


def test_stolen_device_with_a_superseded_certificate_is_revoked_too(registry: Registry) -> None:
    """A renewed device's old certificate still verifies until it expires: revoking the
    device must put it on the CRL as well, or a stolen unit keeps logging in with it."""
    add_cert(registry, "a0", days=-1)  # expired: it needs no CRL entry
    add_cert(registry, "a1")
    add_cert(registry, "a2", supersede=True)
    assert registry.get_certificate("a1").status == "superseded"  # type: ignore[union-attr]
    published: list[set[str]] = []
    revoked = registry.revoke(
        DEVICE, "key_compromise", now=NOW,
        before_commit=lambda rows: published.append({r.serial for r in rows}),
    )
    assert {r.serial for r in revoked} == {"a1", "a2"}
    assert published == [{"a1", "a2"}]
    assert registry.get_certificate("a1").revocation_reason == "key_compromise"  # type: ignore[union-attr]


def test_revoking_an_unknown_serial_is_refused(registry: Registry) -> None:
    with pytest.raises(InputError, match="neither a device id nor a certificate serial"):
        registry.revoke("abcdef")


def test_revocation_rolls_back_when_the_crl_cannot_be_published(registry: Registry) -> None:
    add_cert(registry, "a1")
    seen: list[Sequence[CertRecord]] = []

    def publish(revoked: Sequence[CertRecord]) -> None:
        seen.append(revoked)
        raise OSError("disk full")

    with pytest.raises(OSError):
        registry.revoke("a1", before_commit=publish)
    assert [r.serial for r in seen[0]] == ["a1"]
    assert registry.get_certificate("a1").status == "active"  # type: ignore[union-attr]


def test_certificate_for_unknown_device_without_chip_is_refused(registry: Registry) -> None:
    with pytest.raises(InputError, match="not in the registry"):
        registry.add_certificate(
            serial="a1",
            device_id=DEVICE,
            not_before=NOW,
            not_after=NOW,
            fingerprint_sha256="0" * 64,
        )
    assert registry.list_devices() == []


def test_unreachable_database_is_a_registry_error(tmp_path: Path) -> None:
    with pytest.raises(RegistryError):
        Registry.open(f"sqlite:///{tmp_path / 'missing-dir' / 'x.db'}")


def test_damaged_sqlite_registry_says_so(tmp_path: Path) -> None:
    damaged = tmp_path / "registry.db"
    damaged.write_bytes(b"garbage" * 200)
    with pytest.raises(RegistryError, match=r"file is not a database.*restore it from a backup"):
        Registry.open(f"sqlite:///{damaged}")


def test_registry_errors_do_not_show_the_password() -> None:
    url = "postgresql+nosuchdriver://fleet:s3cret-pw@db.invalid/fleet"
    with pytest.raises(RegistryError) as caught:
        Registry.open(url)
    assert "s3cret-pw" not in str(caught.value) and "fleet.toml" in str(caught.value)


def _record_many(url: str, prefix: str) -> int:
    with Registry.open(url) as reg:
        for i in range(15):
            add_cert(reg, f"{prefix}{i:02x}", device_id=f"esp32-{prefix}{i:010x}")
    return 15


def test_parallel_processes_record_without_locking_errors(url: str) -> None:
    import multiprocessing

    Registry.open(url).close()
    with multiprocessing.get_context("fork").Pool(2) as pool:
        counts = pool.starmap(_record_many, [(url, "aa"), (url, "bb")])
    assert counts == [15, 15]
    with Registry.open(url) as reg:
        assert len(reg.certificates()) == 30


def _provisioned(registry: Registry, serial: str, bundle: str) -> None:
    registry.record_provisioned(
        DEVICE, chip="esp32", mac="24a1600a1b2c", mode="release",
        recovery_secret_hash="scrypt$...", bundle_sha256=bundle, serial=serial,
        not_before=NOW, not_after=NOW + dt.timedelta(days=730),
        fingerprint_sha256=serial.rjust(64, "0"),
    )


def test_record_provisioned_creates_then_rebuilds_superseding_the_certificate(
    registry: Registry,
) -> None:
    add_cert(registry, "c0")  # `cert issue` registered the board first
    _provisioned(registry, "b1", "11" * 32)
    device = registry.get_device(DEVICE)
    assert device is not None
    assert (device.status, device.mode, device.bundle_sha256) == ("provisioned", "release",
                                                                  "11" * 32)
    _provisioned(registry, "b2", "22" * 32)  # an unflashed device rebuilt
    assert registry.get_device(DEVICE).bundle_sha256 == "22" * 32  # type: ignore[union-attr]
    statuses = {c.serial: c.status for c in registry.certificates(device_id=DEVICE)}
    assert statuses == {"c0": "superseded", "b1": "superseded", "b2": "active"}


def test_record_provisioned_with_a_taken_serial_leaves_the_device_unchanged(
    registry: Registry,
) -> None:
    _provisioned(registry, "b1", "11" * 32)
    add_cert(registry, "x9", device_id="esp32s3-000000000001")
    with pytest.raises(RegistryError, match="conflicting record"):
        _provisioned(registry, "x9", "22" * 32)
    assert registry.get_device(DEVICE).bundle_sha256 == "11" * 32  # type: ignore[union-attr]
    assert registry.active_certificate(DEVICE, at=NOW).serial == "b1"  # type: ignore[union-attr]
