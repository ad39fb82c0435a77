"""The broker and recovery URIs a bundle's NVS carries, from fleet.toml's first broker host."""

from __future__ import annotations

from pathlib import Path

import pytest

from espfleet.provisioning.demo_firmware import demo_firmware
from espfleet.provisioning.inputs import FirmwareSource
from espfleet.provisioning.prepare import build_policy
from espfleet.workspace import Workspace

PASS = b"correct horse battery staple"


@pytest.mark.parametrize(
    ("host", "authority"),
    [("mqtt.acme.example", "mqtt.acme.example"), ("10.0.0.5", "10.0.0.5"),
     ("2001:db8::5", "[2001:db8::5]")],
)
def test_broker_uri_names_the_host_as_a_uri_authority(
    tmp_path: Path, host: str, authority: str
) -> None:
    """mqtts://2001:db8::5:8883 is not a URI a device's MQTT client can parse."""
    ws = Workspace.create(tmp_path / "ws", org="Acme", passphrase=PASS, broker_hosts=(host,))
    key = ws.signing_key(PASS)
    firmware = demo_firmware("esp32", key, app_payload_size=0x1000)
    source = FirmwareSource(kind="app-image", origin=tmp_path / "app.bin", app=firmware.app,
                            bootloader=firmware.bootloader, bootloader_origin="--bootloader")
    policy = build_policy(workspace=ws, source=source, signing_key=key, mode="release")
    assert policy.broker_uri == f"mqtts://{authority}:8883"
    assert policy.recovery_uri == f"mqtts://{authority}:8884"
