"""End to end over ``socket://``: the real esptool and espefuse flash a virtual ESP32
(:class:`espfleet.device.server.LoaderServer`). The images are encrypted with espsecure,
so reading them back through the virtual chip's flash-encryption engine proves the key
went into eFuse in the byte order the hardware uses."""

from __future__ import annotations

import dataclasses
import io
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import espsecure
import pytest

from espfleet.chips import chip_facts
from espfleet.device.chip import VirtualChip
from espfleet.device.server import LoaderServer
from espfleet.errors import FlashError
from espfleet.provisioning.efuse_plan import plan_for
from espfleet.provisioning.esptool_driver import PortProfile, open_session
from espfleet.provisioning.flash_journal import FlashJournal
from espfleet.provisioning.flasher import FlashImage, FlashJob, execute, inspect_chip

MAC = bytes.fromhex("246f28a1b2c4")
DIGEST = bytes(range(0xA0, 0xC0))
REVISION = {"esp32": 300, "esp32s3": 2, "esp32c3": 4}


def encrypt(chip: str, key: bytes, offset: int, plain: bytes) -> bytes:
    out = io.BytesIO()
    xts = chip_facts(chip).encryption_scheme == "xts-aes"
    espsecure.encrypt_flash_data(io.BytesIO(key), out, offset, 0xF, xts, io.BytesIO(plain))
    return out.getvalue()


def make_job(chip: str, key: bytes, mode: str = "release") -> tuple[FlashJob, dict[int, bytes]]:
    plain = {
        chip_facts(chip).bootloader_offset: os.urandom(0x4000),
        0x8000: os.urandom(0x1000),
        0x20000: os.urandom(0x10000),
    }
    images = tuple(
        FlashImage(f"part{offset:x}", offset, encrypt(chip, key, offset, data), True)
        for offset, data in plain.items()
    )
    job = FlashJob(f"{chip}-{MAC.hex()}", chip, MAC, plan_for(chip, mode), images, DIGEST)
    return job, plain


Serve = Callable[..., tuple[VirtualChip, str]]


@pytest.fixture
def served() -> Iterator[Serve]:
    """``served(chip, revision=, mac=)`` -> (virtual chip, its socket:// URL)."""
    holder: list[LoaderServer] = []

    def start(
        chip: str, *, revision: int | None = None, mac: bytes = MAC, flash_size: int = 4 << 20
    ) -> tuple[VirtualChip, str]:
        rev = REVISION[chip] if revision is None else revision
        vchip = VirtualChip.new(chip, revision=rev, mac=mac, flash_size=flash_size)
        server = LoaderServer(vchip).start()
        holder.append(server)
        return vchip, server.url

    yield start
    for server in holder:
        server.stop()


def flash(url: str, job: FlashJob, tmp_path: Path, key: bytes) -> None:
    session = open_session(url)
    try:
        journal = FlashJournal.load(tmp_path, job.device_id)
        execute(inspect_chip(job, session, journal), session, journal, key_provider=lambda: key)
    finally:
        session.close()


@pytest.mark.slow
@pytest.mark.parametrize("chip", ["esp32", "esp32s3", "esp32c3"])
def test_release_flash_over_socket_decrypts_on_chip_and_locks_download(
    served, tmp_path: Path, chip: str
) -> None:
    key = os.urandom(32)
    vchip, url = served(chip)
    job, plain = make_job(chip, key)
    flash(url, job, tmp_path, key)

    assert vchip.flash_encryption_enabled()
    assert vchip.hardware_key() is not None
    for offset, data in plain.items():
        assert vchip.read_decrypted(offset, len(data)) == data, f"{offset:#x} does not decrypt"
    for image in job.images:
        assert vchip.flash.read(image.offset, len(image.data)) == image.data
    # After the release locks, a reconnect (= reset) no longer reaches a normal loader.
    with pytest.raises(FlashError, match=r"Secure Download Mode|no chip answered"):
        open_session(url).close()


def test_development_flash_over_socket_leaves_loader_reachable(
    served, tmp_path: Path
) -> None:
    key = os.urandom(32)
    vchip, url = served("esp32")
    job, plain = make_job("esp32", key, "development")
    flash(url, job, tmp_path, key)
    assert vchip.read_decrypted(0x20000, 0x10000) == plain[0x20000]
    session = open_session(url)
    try:
        inspection = inspect_chip(job, session, FlashJournal.load(tmp_path, job.device_id))
        assert inspection.complete
    finally:
        session.close()


def _refused(url: str, job: FlashJob, tmp_path: Path, vchip: VirtualChip, match: str) -> None:
    efuses, flash_before = vchip.efuse_bytes(), vchip.flash.read(0, 0x30000)
    with pytest.raises(FlashError, match=match):
        flash(url, job, tmp_path, os.urandom(32))
    assert vchip.efuse_bytes() == efuses
    assert vchip.flash.read(0, 0x30000) == flash_before


def test_wrong_chip_over_socket_refused(served: Serve, tmp_path: Path) -> None:
    vchip, url = served("esp32c3")
    job, _ = make_job("esp32", os.urandom(32))
    _refused(url, job, tmp_path, vchip, "bundle is for an esp32 but the chip is an esp32c3")


def test_esp32_rev1_over_socket_refused(served: Serve, tmp_path: Path) -> None:
    vchip, url = served("esp32", revision=100)
    job, _ = make_job("esp32", os.urandom(32))
    _refused(url, job, tmp_path, vchip, r"revision v1\.0, below v3\.0")


def test_mac_mismatch_over_socket_refused(served: Serve, tmp_path: Path) -> None:
    vchip, url = served("esp32s3", mac=bytes.fromhex("246f28a1b2c8"))
    job, _ = make_job("esp32s3", os.urandom(32))
    _refused(url, job, tmp_path, vchip, "has MAC 24:6f:28:a1:b2:c8, not")


def test_flash_smaller_than_the_bundle_over_socket_refused(served: Serve, tmp_path: Path) -> None:
    """A 2 MB module given a 4 MB bundle: ESP-IDF's app would refuse to start, and after
    the release locks nothing could fix it. esptool's flash-id detection decides."""
    vchip, url = served("esp32", flash_size=2 << 20)
    job, _ = make_job("esp32", os.urandom(32))
    job = dataclasses.replace(job, flash_size="4MB")
    _refused(url, job, tmp_path, vchip, "has 2MB of flash, but .* bundle is built for 4MB")


def test_larger_flash_than_the_bundle_is_accepted(served: Serve, tmp_path: Path) -> None:
    _, url = served("esp32", flash_size=8 << 20)
    job, _ = make_job("esp32", os.urandom(32))
    job = dataclasses.replace(job, flash_size="4MB")
    session = open_session(url)
    try:
        assert session.identity.flash_size == "8MB"
        inspection = inspect_chip(job, session, FlashJournal.load(tmp_path, job.device_id))
        assert inspection.to_json()["flash_size"] == "8MB"
    finally:
        session.close()


def test_crypt_counter_already_odd_over_socket_refused(served: Serve, tmp_path: Path) -> None:
    vchip, url = served("esp32")
    vchip.burn_efuse("FLASH_CRYPT_CNT", 1)
    job, _ = make_job("esp32", os.urandom(32))
    _refused(url, job, tmp_path, vchip, r"FLASH_CRYPT_CNT is already 0x1 \(an odd number")


def test_no_chip_on_port_names_port_and_what_to_check() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"socket://127.0.0.1:{port}"
    with pytest.raises(FlashError) as failure:
        open_session(url)
    message = str(failure.value)
    assert f"no chip answered on {url}" in message
    assert "listening" in message and "nothing was changed" in message


def test_silent_listener_is_no_chip() -> None:
    """Something accepts the TCP connection but never answers SYNC."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        url = f"socket://127.0.0.1:{listener.getsockname()[1]}"
        with pytest.raises(FlashError, match=f"no chip answered on {url}"):
            open_session(url, connect_attempts=1)


@pytest.mark.parametrize(
    ("port", "before", "stub"),
    [
        ("socket://127.0.0.1:5555", "no-reset", False),
        ("/dev/ttyUSB0", "default-reset", True),
        ("rfc2217://10.0.0.2:4000", "default-reset", True),
    ],
)
def test_port_profile_picks_reset_and_stub_from_port(port: str, before: str, stub: bool) -> None:
    profile = PortProfile.for_port(port)
    assert (profile.before, profile.use_stub) == (before, stub)
    assert profile.after == ("no-reset" if port.startswith("socket://") else "hard-reset")


def test_missing_serial_device_is_one_line_naming_the_port() -> None:
    with pytest.raises(FlashError) as failure:
        open_session("/dev/ttyESPFLEET-NONE")
    message = str(failure.value)
    assert "\n" not in message
    assert message.startswith("no chip answered on /dev/ttyESPFLEET-NONE")
    assert "check the cable and the port name" in message


def test_connection_lost_before_download_lock_resumes_over_socket(
    served: Serve, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hardening burned, then the link dropped before the download lock: the re-run
    (a new connection = a reset) finds everything but the lock done and burns only it."""
    key = os.urandom(32)
    vchip, url = served("esp32")
    job, plain = make_job("esp32", key)
    session = open_session(url)
    real_burn = session.efuses.burn

    def burn_until_lock(steps, material):  # type: ignore[no-untyped-def]
        if any(s.target == "UART_DOWNLOAD_DIS" for s in steps):
            raise FlashError("serial link lost")
        real_burn(steps, material)

    monkeypatch.setattr(session.efuses, "burn", burn_until_lock)
    journal = FlashJournal.load(tmp_path, job.device_id)
    with pytest.raises(FlashError, match=r"stopped during post_flash.*Re-run"):
        execute(inspect_chip(job, session, journal), session, journal, key_provider=lambda: key)
    session.close()

    again = open_session(url)
    try:
        inspection = inspect_chip(job, again, FlashJournal.load(tmp_path, job.device_id))
        todo = [c.step.describe() for c in inspection.efuse if not c.done]
        assert todo == ["burn_efuse UART_DOWNLOAD_DIS=0x1", "write_protect_efuse FLASH_CRYPT_CNT"]
        assert all(i.done for i in inspection.images)
        result = execute(inspection, again, FlashJournal.load(tmp_path, job.device_id),
                         key_provider=lambda: pytest.fail("key asked again"))
    finally:
        again.close()
    assert result.images_written == () and len(result.locks_burned) == 2
    assert vchip.read_decrypted(0x20000, len(plain[0x20000])) == plain[0x20000]
