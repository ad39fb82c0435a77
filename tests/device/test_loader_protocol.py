"""The ROM loader protocol in-process: SLIP framing, replies, refusals."""

from __future__ import annotations

import hashlib
import struct
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from espfleet.device.chip import VirtualChip
from espfleet.device.flash import PowerCut
from espfleet.device.loader import Op, RomError, RomLoader
from espfleet.device.slip import SlipDecoder, encode


@given(st.lists(st.binary(min_size=1, max_size=300), min_size=1, max_size=5), st.integers(1, 7))
def test_slip_round_trip_in_any_chunking(frames: list[bytes], chunk: int) -> None:
    stream = b"noise" + b"".join(encode(f) for f in frames)
    decoder = SlipDecoder()
    out: list[bytes] = []
    for i in range(0, len(stream), chunk):
        out += decoder.feed(stream[i : i + chunk])
    assert out == frames


def test_slip_escapes_delimiters() -> None:
    assert encode(b"\xc0\xdb") == b"\xc0\xdb\xdc\xdb\xdd\xc0"


def test_slip_drops_a_frame_with_a_bad_escape() -> None:
    assert SlipDecoder().feed(b"\xc0ab\xdb\x01c\xc0\xc0ok\xc0") == [b"ok"]


def _request(op: int, data: bytes = b"", chk: int = 0) -> bytes:
    return struct.pack("<BBHI", 0, op, len(data), chk) + data


def _reply(raw: bytes) -> tuple[int, int, bytes, bytes]:
    _, op, length, value = struct.unpack("<BBHI", raw[:8])
    body = raw[8 : 8 + length]
    return op, value, body[:-4], body[-4:]


def _checksum(data: bytes) -> int:
    state = 0xEF
    for b in data:
        state ^= b
    return state


@pytest.fixture
def esp32() -> VirtualChip:
    return VirtualChip.new("esp32", flash_size=1 << 20, mac=bytes.fromhex("24a1600a1b2c"))


def test_sync_is_answered_eight_times_with_a_rom_value(esp32: VirtualChip) -> None:
    replies = RomLoader(esp32).handle(_request(Op.SYNC, b"\x07\x07\x12\x20" + b"\x55" * 32))
    assert len(replies) == 8
    assert all(_reply(r)[1] != 0 for r in replies)


def test_esp32_rom_lacks_get_security_info(esp32: VirtualChip) -> None:
    (reply,) = RomLoader(esp32).handle(_request(Op.GET_SECURITY_INFO))
    assert _reply(reply)[3][:2] == bytes([1, RomError.INVALID_MESSAGE])


def test_s3_security_info_reports_chip_id_and_crypt_count() -> None:
    chip = VirtualChip.new("esp32s3", flash_size=1 << 20)
    chip.burn_efuse("SPI_BOOT_CRYPT_CNT", 1)
    (reply,) = RomLoader(chip).handle(_request(Op.GET_SECURITY_INFO))
    _, _, body, status = _reply(reply)
    fields = struct.unpack("<IBBBBBBBBII", body)
    assert status[0] == 0
    assert fields[1] == 1 and fields[9] == 9


def test_chip_magic_and_mac_registers(esp32: VirtualChip) -> None:
    loader = RomLoader(esp32)
    (magic,) = loader.handle(_request(Op.READ_REG, struct.pack("<I", 0x40001000)))
    assert _reply(magic)[1] == 0x00F01D83
    w1 = _reply(loader.handle(_request(Op.READ_REG, struct.pack("<I", 0x3FF5A004)))[0])[1]
    w2 = _reply(loader.handle(_request(Op.READ_REG, struct.pack("<I", 0x3FF5A008)))[0])[1]
    assert struct.pack(">II", w2, w1)[2:] == bytes.fromhex("24a1600a1b2c")


def test_compressed_write_then_md5_and_slow_read(esp32: VirtualChip) -> None:
    loader = RomLoader(esp32)
    image = bytes(range(256)) * 20
    packed = zlib.compress(image, 9)
    begin = struct.pack("<IIII", 0x2000, 1, 0x400 * 8, 0x10000)
    assert _reply(loader.handle(_request(Op.FLASH_DEFL_BEGIN, begin))[0])[3][0] == 0
    block = struct.pack("<IIII", len(packed), 0, 0, 0) + packed
    reply = loader.handle(_request(Op.FLASH_DEFL_DATA, block, _checksum(packed)))[0]
    assert _reply(reply)[3][0] == 0
    md5 = loader.handle(_request(Op.SPI_FLASH_MD5, struct.pack("<IIII", 0x10000, len(image), 0, 0)))
    assert _reply(md5[0])[2] == hashlib.md5(image).hexdigest().encode()
    read = loader.handle(_request(Op.READ_FLASH_SLOW, struct.pack("<II", 0x10000, 64)))
    assert _reply(read[0])[2] == image[:64]


def test_corrupted_block_checksum_is_refused_and_not_written(esp32: VirtualChip) -> None:
    loader = RomLoader(esp32)
    loader.handle(_request(Op.FLASH_BEGIN, struct.pack("<IIII", 0x400, 1, 0x400, 0)))
    data = b"\x00" * 0x400
    block = struct.pack("<IIII", len(data), 0, 0, 0) + data
    reply = loader.handle(_request(Op.FLASH_DATA, block, _checksum(data) ^ 1))[0]
    assert _reply(reply)[3][:2] == bytes([1, RomError.BAD_CHECKSUM])
    assert esp32.flash.read(0, 0x400) == b"\xff" * 0x400


def test_stub_upload_is_refused_with_a_clear_console_note(esp32: VirtualChip) -> None:
    reply = RomLoader(esp32).handle(_request(Op.MEM_BEGIN, b"\x00" * 16))[0]
    assert _reply(reply)[3][0] == 1
    assert "--no-stub" in esp32.console[-1]


def test_secure_download_mode_refuses_register_and_flash_reads() -> None:
    chip = VirtualChip.new("esp32c3", flash_size=1 << 20)
    chip.burn_efuse("ENABLE_SECURITY_DOWNLOAD", 1)
    chip.reset()
    loader = RomLoader(chip)
    assert loader.secure
    for op, data in (
        (Op.READ_REG, struct.pack("<I", 0x40001000)),
        (Op.READ_FLASH_SLOW, struct.pack("<II", 0, 64)),
        (Op.SPI_FLASH_MD5, struct.pack("<IIII", 0, 64, 0, 0)),
        (Op.WRITE_REG, struct.pack("<IIII", chip.efuse.base, 1, 0xFFFFFFFF, 0)),
    ):
        assert _reply(loader.handle(_request(op, data))[0])[3][0] == 1
    (info,) = loader.handle(_request(Op.GET_SECURITY_INFO))
    flags = struct.unpack("<I", _reply(info)[2][:4])[0]
    assert flags & 1 << 2  # SECURE_DOWNLOAD_ENABLE, as esptool reads it


def test_power_cut_mid_block_leaves_a_partially_programmed_image(esp32: VirtualChip) -> None:
    loader = RomLoader(esp32)
    loader.handle(_request(Op.FLASH_BEGIN, struct.pack("<IIII", 0x800, 2, 0x400, 0x1000)))
    esp32.flash.arm_power_cut(0x400 + 100)  # one block, then 100 bytes of the next
    data = bytes(range(256)) * 4
    for seq in range(2):
        block = struct.pack("<IIII", len(data), seq, 0, 0) + data
        if seq == 1:
            with pytest.raises(PowerCut):
                loader.handle(_request(Op.FLASH_DATA, block, _checksum(data)))
        else:
            loader.handle(_request(Op.FLASH_DATA, block, _checksum(data)))
    assert esp32.flash.read(0x1000, 0x400 + 100) == data + data[:100]
    assert esp32.flash.read(0x1400 + 100, 0x400 - 100) == b"\xff" * (0x400 - 100)
