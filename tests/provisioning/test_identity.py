"""Identity NVS entries and the recovery-secret hash."""

from __future__ import annotations

import pytest

from espfleet.errors import InputError
from espfleet.provisioning.identity import (
    NVS_NAMESPACE,
    DeviceIdentity,
    NvsKey,
    hash_recovery_secret,
    new_recovery_secret,
    verify_recovery_secret,
)

DEV = "esp32-02e5f1000000"


def _identity(**changes: str | None) -> DeviceIdentity:
    base: dict[str, str | None] = dict(
        device_id=DEV, device_cert="CERT", device_key="KEY", ca_chain="CHAIN",
        broker_uri="mqtts://broker:8883", recovery_uri="mqtts://broker:8884",
        recovery_secret="rs", ota_ca="OTACA",
    )
    base.update(changes)
    return DeviceIdentity(**base)  # type: ignore[arg-type]


def test_entries_have_required_keys_in_order_and_optional_wifi() -> None:
    assert NVS_NAMESPACE == "espfleet"
    assert list(_identity().entries()) == [k.value for k in NvsKey][:7]
    with_wifi = _identity(wifi_ssid="lab", wifi_pass="pw").entries()
    assert with_wifi["wifi_ssid"] == "lab" and with_wifi["wifi_pass"] == "pw"
    assert all(len(k) <= 15 for k in with_wifi)
    assert DeviceIdentity.from_entries(DEV, with_wifi) == _identity(wifi_ssid="lab", wifi_pass="pw")
    assert "KEY" not in repr(_identity()) and "'rs'" not in repr(_identity())


def test_bad_identity_values_are_refused() -> None:
    with pytest.raises(InputError, match="device_cert"):
        _identity(device_cert="x" * 4000)
    with pytest.raises(InputError, match="not a TLS MQTT URI"):
        _identity(broker_uri="mqtt://plain:1883")
    with pytest.raises(InputError, match="without an SSID"):
        _identity(wifi_pass="pw")
    with pytest.raises(InputError, match="lacks"):
        DeviceIdentity.from_entries(DEV, {"device_cert": "x"})


def test_recovery_secret_hash_verifies_and_is_salted() -> None:
    secret = new_recovery_secret()
    assert len(secret) >= 43
    stored = hash_recovery_secret(secret)
    assert secret not in stored
    assert stored != hash_recovery_secret(secret)
    assert verify_recovery_secret(secret, stored)


def test_wrong_recovery_secret_and_garbage_hash_do_not_verify() -> None:
    stored = hash_recovery_secret("right")
    assert not verify_recovery_secret("wrong", stored)
    assert not verify_recovery_secret("right", "garbage")
    assert not verify_recovery_secret("right", stored.replace("scrypt", "md5"))
