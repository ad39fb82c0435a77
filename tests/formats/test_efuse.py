"""eFuse images made by the real espefuse (--virt, in-process), decoded and compared
field by field with espefuse's own JSON summary."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import espefuse
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from espfleet.chips import chip_facts
from espfleet.errors import FormatError, InputError
from espfleet.formats import secure_boot as sb
from espfleet.formats.efuse import EfuseImage, field_names

CHIPS = ("esp32", "esp32s3", "esp32c3")


class _JsonSink(io.StringIO):
    """espefuse's summary wants a named file object and closes it."""

    name = "summary.json"
    text = ""

    def close(self) -> None:
        self.text = self.getvalue()
        super().close()


def _open(chip: str, path: Path) -> tuple[Any, Any]:
    esp = espefuse.get_esp(chip=chip, virt=True, virt_efuse_file=str(path))
    return esp, espefuse.init_commands(esp=esp, do_not_confirm=True)


def _summary(commands: Any) -> dict[str, dict[str, Any]]:
    sink = _JsonSink()
    commands.summary(format="json", file=sink)
    result: dict[str, dict[str, Any]] = json.loads(sink.text)
    return result


def _key_file(data: bytes) -> io.BytesIO:
    handle = io.BytesIO(data)
    handle.name = "key.bin"
    return handle


def _raw_hex(value: int | bytes, bit_len: int) -> str:
    if isinstance(value, bytes):
        return "0x" + value.hex()
    return "0x" + format(value, f"0{(bit_len + 3) // 4}x")


def _assert_agrees(image: EfuseImage, summary: dict[str, dict[str, Any]]) -> int:
    """Every stored field espefuse shows has the same raw value, readability and
    writability in our decode. Returns how many fields were compared."""
    compared = 0
    for name, entry in summary.items():
        if entry["word"] is None:  # espefuse's derived ("calc") fields
            continue
        assert _raw_hex(image.get(name), entry["bit_len"]) == entry["raw_value"], name
        assert image.is_write_protected(name) is (not entry["writeable"]), name
        compared += 1
    return compared


@pytest.fixture(scope="module")
def rsa_pem(vectors: Path) -> bytes:
    return (vectors / "rsa_secure_boot_signing_key.pem").read_bytes()


def test_esp32_release_posture_decodes_like_espefuse(tmp_path: Path, rsa_pem: bytes) -> None:
    path = tmp_path / "esp32.bin"
    esp, cmd = _open("esp32", path)
    esp.set_chip_revision(300)
    fe_key = bytes(range(32))
    cmd.burn_key(["flash_encryption"], [_key_file(fe_key)], no_protect_key=False)
    cmd.burn_efuse({"FLASH_CRYPT_CONFIG": 0xF, "FLASH_CRYPT_CNT": 0x7F})
    cmd.burn_key_digest(_key_file(rsa_pem), no_protect_key=False)
    cmd.burn_efuse({"ABS_DONE_1": 1, "JTAG_DISABLE": 1, "DISABLE_DL_ENCRYPT": 1,
                    "SECURE_VERSION": 0x7, "UART_DOWNLOAD_DIS": 1})
    cmd.write_protect_efuse(["FLASH_CRYPT_CNT"])
    summary = _summary(cmd)
    image = EfuseImage.decode("esp32", path.read_bytes())

    assert _assert_agrees(image, summary) > 40
    assert image.chip_revision == esp.get_chip_revision() == 300
    assert image.is_read_protected("BLOCK1") and image.is_read_protected("flash_encryption")
    assert image.get("BLOCK1") == bytes(32)  # a read-protected key reads as zeros
    assert not image.is_read_protected("BLOCK2")
    assert image.is_write_protected("FLASH_CRYPT_CNT")
    assert image.is_write_protected("UART_DOWNLOAD_DIS")  # shares WR_DIS bit 2
    assert image.crypt_cnt == 0x7F and image.crypt_cnt_enabled  # 7 bits set: odd
    assert image.secure_boot_enabled
    assert image.key_purpose("BLOCK1") is None
    assert image.get("SECURE_VERSION") == 7
    slots = image.secure_boot_digests()
    assert [(s.slot, s.block, s.revoked) for s in slots] == [(0, "BLOCK2", False)]
    assert slots[0].digest == sb.public_key_digest(sb.load_private_key(rsa_pem))


def test_esp32_development_posture_crypt_counter_is_odd(tmp_path: Path) -> None:
    path = tmp_path / "esp32.bin"
    _, cmd = _open("esp32", path)
    cmd.burn_efuse({"FLASH_CRYPT_CNT": 1})
    image = EfuseImage.decode("esp32", path.read_bytes())
    assert image.crypt_cnt_enabled
    assert _assert_agrees(image, _summary(cmd)) > 40


@pytest.mark.parametrize("chip", ["esp32s3", "esp32c3"])
def test_xts_chip_posture_decodes_like_espefuse(tmp_path: Path, chip: str, rsa_pem: bytes,
                                                vectors: Path) -> None:
    path = tmp_path / f"{chip}.bin"
    esp, cmd = _open(chip, path)
    esp.set_chip_revision(102 if chip == "esp32s3" else 4)
    cmd.burn_key(["BLOCK_KEY0"], [_key_file(bytes(range(32)))], ["XTS_AES_128_KEY"])
    cmd.burn_key(["BLOCK_KEY3"], [_key_file(bytes(range(100, 132)))], ["USER"],
                 no_read_protect=True, no_write_protect=True)
    second = (vectors / "rsa_secure_boot_signing_key2.pem").read_bytes()
    cmd.burn_key_digest(["BLOCK_KEY1", "BLOCK_KEY2"], [_key_file(rsa_pem), _key_file(second)],
                        ["SECURE_BOOT_DIGEST0", "SECURE_BOOT_DIGEST1"])
    cmd.burn_efuse({"SPI_BOOT_CRYPT_CNT": 0x1, "SECURE_BOOT_EN": 1,
                    "SECURE_BOOT_KEY_REVOKE1": 1, "SECURE_BOOT_KEY_REVOKE2": 1})
    cmd.burn_key(["BLOCK_KEY4"], [_key_file(bytes(range(7, 39)))], ["HMAC_UP"],
                 no_read_protect=True, no_write_protect=True)
    cmd.read_protect_efuse(["BLOCK_KEY4"])
    summary = _summary(cmd)
    image = EfuseImage.decode(chip, path.read_bytes())

    assert _assert_agrees(image, summary) > 60
    assert image.chip_revision == esp.get_chip_revision()
    assert image.key_purpose("BLOCK_KEY0") == "XTS_AES_128_KEY"
    assert image.key_purpose("BLOCK4") == "XTS_AES_128_KEY"  # espefuse's alias
    assert image.key_purpose("BLOCK_KEY3") == "USER"
    assert image.get("BLOCK_KEY3") == bytes(range(100, 132))
    for block in ("BLOCK_KEY0", "BLOCK_KEY4"):
        assert image.is_read_protected(block)
    assert not image.is_read_protected("BLOCK_KEY3")
    assert image.crypt_cnt_enabled and image.secure_boot_enabled
    digests = image.secure_boot_digests()
    assert [(d.slot, d.block, d.revoked) for d in digests] == [
        (0, "BLOCK_KEY1", False), (1, "BLOCK_KEY2", True)]
    assert digests[0].digest == sb.public_key_digest(sb.load_private_key(rsa_pem))
    assert digests[1].digest == sb.public_key_digest(sb.load_private_key(second))
    # Summary flags agree for every block.
    for name, entry in summary.items():
        if name.startswith("BLOCK_KEY"):
            assert image.is_read_protected(name) is (not entry["readable"]), name


def test_s3_xts_aes_256_key_purposes(tmp_path: Path) -> None:
    path = tmp_path / "esp32s3.bin"
    _, cmd = _open("esp32s3", path)
    cmd.burn_key(["BLOCK_KEY2"], [_key_file(bytes(range(64)))], ["XTS_AES_256_KEY"],
                 no_read_protect=True)
    image = EfuseImage.decode("esp32s3", path.read_bytes())
    assert image.key_purpose("BLOCK_KEY2") == "XTS_AES_256_KEY_1"
    assert image.key_purpose("BLOCK_KEY3") == "XTS_AES_256_KEY_2"
    # espefuse stores XTS keys byte-reversed, each 32-byte half on its own block.
    assert image.get("BLOCK_KEY2") == bytes(range(32))[::-1]
    assert image.get("BLOCK_KEY3") == bytes(range(32, 64))[::-1]
    _assert_agrees(image, _summary(cmd))


@pytest.mark.parametrize("chip", CHIPS)
def test_blank_image_is_a_fresh_chip(tmp_path: Path, chip: str) -> None:
    path = tmp_path / f"{chip}.bin"
    _, cmd = _open(chip, path)
    summary = _summary(cmd)
    assert path.read_bytes() == EfuseImage.blank(chip).encode()
    image = EfuseImage.blank(chip)
    _assert_agrees(image, summary)
    assert not image.crypt_cnt_enabled and not image.secure_boot_enabled
    assert image.secure_boot_digests() == []


@pytest.mark.parametrize("chip", CHIPS)
def test_image_we_build_reads_back_in_espefuse(tmp_path: Path, chip: str) -> None:
    facts = chip_facts(chip)
    image = EfuseImage.blank(chip).with_fields({
        facts.crypt_cnt_field: facts.crypt_cnt_release,
        facts.sb_enable_field: 1,
        facts.rd_dis_field: 1,
        "WR_DIS": 0b110,
    })
    digest_block = facts.sb_digest_blocks[1 if facts.sb_digest_purposes else 0]
    image = image.with_field(digest_block, bytes(range(32)))
    if facts.sb_digest_purposes:
        image = image.with_field("KEY_PURPOSE_1", 9)  # SECURE_BOOT_DIGEST0
    path = tmp_path / f"{chip}.bin"
    path.write_bytes(image.encode())
    _, cmd = _open(chip, path)
    assert _assert_agrees(image, _summary(cmd)) > 40
    assert [d.digest for d in image.secure_boot_digests()] == [bytes(range(32))]


def test_esp32_3_4_coding_scheme_has_24_byte_keys(tmp_path: Path) -> None:
    image = EfuseImage.blank("esp32").with_field("CODING_SCHEME", 1)
    assert len(image.get_bytes("BLOCK1")) == 24
    image = image.with_field("BLOCK1", bytes(range(24)))
    path = tmp_path / "esp32.bin"
    path.write_bytes(image.encode())
    _, cmd = _open("esp32", path)
    summary = _summary(cmd)
    assert summary["BLOCK1"]["raw_value"] == "0x" + bytes(range(24)).hex()
    _assert_agrees(image, summary)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(CHIPS), st.data())
def test_with_field_round_trip(chip: str, data: st.DataObject) -> None:
    names = field_names(chip)
    image = EfuseImage.blank(chip)
    assignments: dict[str, int | bytes] = {}
    for name in data.draw(st.lists(st.sampled_from(names), max_size=6, unique=True)):
        current = image.get(name)
        if isinstance(current, bytes):
            value: int | bytes = data.draw(st.binary(min_size=len(current),
                                                    max_size=len(current)))
        else:
            bits = image.definition(name).bit_len
            value = data.draw(st.integers(min_value=0, max_value=(1 << bits) - 1))
        image = image.with_field(name, value)
        assignments = {k: v for k, v in assignments.items()
                       if not _overlaps(chip, k, name)}
        assignments[name] = value
    decoded = EfuseImage.decode(chip, image.encode())
    assert decoded == image
    for name, value in assignments.items():
        assert decoded.get(name) == value, name


def _overlaps(chip: str, a: str, b: str) -> bool:
    """Whether two fields share bits (ESP32's BLOCK3 overlaps its sub-fields)."""
    image = EfuseImage.blank(chip)
    fa, fb = image.definition(a), image.definition(b)
    return fa.block == fb.block and fa.start < fb.start + fb.bit_len \
        and fb.start < fa.start + fa.bit_len


@pytest.mark.parametrize(("chip", "size"), [("esp32", 287), ("esp32", 512), ("esp32s3", 288),
                                            ("esp32c3", 0)])
def test_wrong_size_is_a_format_error(chip: str, size: int) -> None:
    with pytest.raises(FormatError, match="expected") as info:
        EfuseImage.decode(chip, bytes(size))
    assert info.value.offset is not None


def test_bad_names_and_values_are_input_errors() -> None:
    image = EfuseImage.blank("esp32s3")
    with pytest.raises(InputError, match="no eFuse field"):
        image.get("FLASH_CRYPT_CNT")  # an ESP32 name
    with pytest.raises(InputError, match="no eFuse block"):
        image.is_read_protected("BLOCK_KEY9")
    with pytest.raises(InputError, match="does not fit"):
        image.with_field("SPI_BOOT_CRYPT_CNT", 8)
    with pytest.raises(InputError, match="takes 32 bytes"):
        image.with_field("BLOCK_KEY0", bytes(31))
    with pytest.raises(InputError, match="unknown chip"):
        EfuseImage.blank("esp8266")
