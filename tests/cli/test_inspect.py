"""`espfleet inspect` through click's CliRunner: exit codes and output."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from espfleet.cli import main
from espfleet.formats import flash_encryption, nvs, otadata
from espfleet.formats import partition_table as pt
from espfleet.formats.efuse import EfuseImage
from espfleet.formats.nvs import NvsValue
from espfleet.formats.nvs_keys import NvsKeys

NAMESPACES = {
    "espfleet": {
        "device_id": NvsValue("string", "esp32-24a1600a1b2c"),
        "boot_count": NvsValue("u32", 3),
        "ca": NvsValue("blob", b"\x30\x82\x01\x0a" * 300),
    },
    "misc": {"delta": NvsValue("i8", -7)},
}


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(main, ["inspect", *map(str, args)])


def run_json(*args: str | Path) -> dict[str, object]:
    result = run(*args, "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert isinstance(document, dict)
    return document


def assert_one_line_error(result: Result, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for needle in needles:
        assert needle in lines[0]


def test_partitions_vector_table(vectors: Path) -> None:
    result = run(vectors / "partitions_singleapp.bin", "--as", "partitions")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("Partition table: 3 entries, ends at 0x190000\n")
    for text in ("factory", "rfdata", "wifidata", "0x110000", "phy", "nvs"):
        assert text in result.stdout


def test_partitions_json(tmp_path: Path) -> None:
    path = tmp_path / "pt.bin"
    path.write_bytes(pt.default_secure_table(4 << 20).encode())
    document = run_json(path, "--as", "partitions")
    rows = document["partitions"]
    assert isinstance(rows, list)
    assert [r["name"] for r in rows] == ["nvs", "nvs_keys", "otadata", "phy_init", "ota_0", "ota_1"]
    assert rows[1] == {
        "name": "nvs_keys", "type": "data", "subtype": "nvs_keys", "type_id": 1,
        "subtype_id": 4, "offset": 0x1C000, "size": 0x1000, "encrypted": True, "readonly": False,
    }  # fmt: skip


@pytest.mark.parametrize("kind", ["partitions", "nvs", "nvs-keys", "image"])
def test_garbage_file_exits_2_with_offset(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "garbage.bin"
    path.write_bytes(os.urandom(0x1FF0) + b"\x00" * 16)
    assert_one_line_error(run(path, "--as", kind), "offset 0x")


def test_tampered_partition_table_exits_2(tmp_path: Path) -> None:
    blob = bytearray(pt.default_secure_table(4 << 20).encode())
    blob[0x3C] ^= 1  # nvs_keys' flags
    path = tmp_path / "pt.bin"
    path.write_bytes(bytes(blob))
    assert_one_line_error(run(path, "--as", "partitions"), "MD5 mismatch", "offset 0xc0")


def test_otadata(tmp_path: Path) -> None:
    valid = otadata.OtaState.VALID
    ota = otadata.select(otadata.set_state(otadata.select(otadata.blank(), 0, 2), valid), 1, 2)
    path = tmp_path / "ota.bin"
    path.write_bytes(ota.encode())
    document = run_json(path, "--as", "otadata")
    assert document["boot_slot"] == 1
    assert document["active_sector"] == 1
    assert document["entries"] == [
        {"seq": 1, "state": "VALID", "slot": 0, "label": "ff" * 20},
        {"seq": 2, "state": "NEW", "slot": 1, "label": "ff" * 20},
    ]
    result = run(path, "--as", "otadata", "--ota-slots", "3")
    assert result.exit_code == 0
    assert result.stdout.startswith("otadata: the bootloader boots ota_1 (with 3 OTA slots)")


def test_corrupt_otadata_is_shown_as_ignored(tmp_path: Path) -> None:
    path = tmp_path / "ota.bin"
    path.write_bytes(os.urandom(0x2000))
    result = run(path, "--as", "otadata")
    assert result.exit_code == 0
    assert result.stdout.count("bad CRC: ignored by the bootloader") == 2
    path.write_bytes(b"\xff" * 0x1010)
    assert_one_line_error(run(path, "--as", "otadata"), "truncated at offset 0x1010")


def test_flash_encrypted_otadata_says_how_to_decrypt_it(tmp_path: Path) -> None:
    """A bundle's otadata.bin is flash-encrypted: both sectors fail their CRC, which
    alone reads as "boots factory"; the title says to decrypt it first."""
    ota = otadata.set_state(otadata.select(otadata.blank(), 0, 2), otadata.OtaState.VALID)
    key = os.urandom(32)
    path = tmp_path / "otadata.bin"
    path.write_bytes(flash_encryption.encrypt(ota.encode(), key, 0x1D000, "esp32"))
    result = run(path, "--as", "otadata")
    assert result.exit_code == 0
    assert "decrypt it with --flash-key, --chip and --address" in result.stdout
    (tmp_path / "fe.key").write_bytes(key)
    decrypted = run(path, "--as", "otadata", "--flash-key", tmp_path / "fe.key",
                    "--chip", "esp32", "--address", "0x1d000")
    assert decrypted.stdout.startswith("otadata: the bootloader boots ota_0 (with 2 OTA slots)\n")
    blank = tmp_path / "blank.bin"
    blank.write_bytes(otadata.blank().encode())
    assert "--flash-key" not in run(blank, "--as", "otadata").stdout


def test_wrong_flash_key_error_points_at_the_key_and_address(tmp_path: Path) -> None:
    """Decrypted with another device's key, the file is garbage: the error must not only
    say "still flash-encrypted? decrypt it first" when the user did just that."""
    keys = NvsKeys(os.urandom(32), os.urandom(32))
    path = tmp_path / "nvs_keys.bin"
    path.write_bytes(flash_encryption.encrypt(keys.encode(), os.urandom(32), 0x1C000, "esp32"))
    (tmp_path / "other.key").write_bytes(os.urandom(32))
    result = run(path, "--as", "nvs-keys", "--chip", "esp32", "--address", "0x1c000",
                 "--flash-key", tmp_path / "other.key")
    assert_one_line_error(result, "CRC32", "decrypted with --flash-key", "wrong key, chip or "
                          "address", "--address 0x1c000")
    assert "garbage like this" not in result.stderr  # also shown for a truncated file


def test_blank_otadata_boots_factory(tmp_path: Path) -> None:
    path = tmp_path / "ota.bin"
    path.write_bytes(otadata.blank().encode())
    result = run(path, "--as", "otadata")
    assert result.exit_code == 0
    assert "boots factory" in result.stdout


def test_nvs_json_is_the_documented_shape(tmp_path: Path) -> None:
    path = tmp_path / "nvs.bin"
    path.write_bytes(nvs.write(NAMESPACES, 0x6000))
    document = run_json(path, "--as", "nvs")
    assert document == {
        "namespaces": {
            "espfleet": {
                "device_id": {"type": "string", "value": "esp32-24a1600a1b2c"},
                "boot_count": {"type": "u32", "value": 3},
                "ca": {"type": "blob", "value": "3082010a" * 300},
            },
            "misc": {"delta": {"type": "i8", "value": -7}},
        }
    }


def test_nvs_human_output(tmp_path: Path) -> None:
    path = tmp_path / "nvs.bin"
    path.write_bytes(nvs.write(NAMESPACES, 0x6000))
    result = run(path, "--as", "nvs")
    assert result.exit_code == 0
    assert result.stdout.startswith("NVS (plaintext): 2 namespaces, 4 keys\n")
    assert "esp32-24a1600a1b2c" in result.stdout and "(1200 bytes)" in result.stdout


def test_markup_and_escape_planted_in_nvs_neither_crash_nor_reach_the_terminal(
    tmp_path: Path,
) -> None:
    """An NVS value comes from the file (a dump is attacker-controlled): rich markup in
    it is shown as text (an unmatched closing tag crashed inspect with a traceback), and
    an escape sequence is shown as '?'."""
    path = tmp_path / "nvs.bin"
    planted = "[/oops] [bold red]RED \x1b[2J"
    path.write_bytes(nvs.write({"cfg": {"note": NvsValue("string", planted)}}, 0x3000))
    result = run(path, "--as", "nvs")
    assert result.exit_code == 0, result.output
    assert "[/oops] [bold red]RED ?[2J" in result.stdout
    assert "\x1b" not in result.stdout


def test_encrypted_nvs_with_keys_file(tmp_path: Path) -> None:
    keys = NvsKeys.generate()
    (tmp_path / "nvs.bin").write_bytes(nvs.write(NAMESPACES, 0x6000, keys))
    (tmp_path / "keys.bin").write_bytes(keys.encode())
    document = run_json(tmp_path / "nvs.bin", "--as", "nvs", "--nvs-keys", tmp_path / "keys.bin")
    assert document == nvs.to_json(NAMESPACES)


def test_encrypted_nvs_without_keys_exits_2_saying_keys_are_needed(tmp_path: Path) -> None:
    (tmp_path / "nvs.bin").write_bytes(nvs.write(NAMESPACES, 0x6000, NvsKeys.generate()))
    assert_one_line_error(run(tmp_path / "nvs.bin", "--as", "nvs"), "--nvs-keys", "offset 0x40")


def test_wrong_key_nvs_exits_2(tmp_path: Path) -> None:
    (tmp_path / "nvs.bin").write_bytes(nvs.write(NAMESPACES, 0x6000, NvsKeys.generate()))
    (tmp_path / "keys.bin").write_bytes(NvsKeys.generate().encode())
    result = run(tmp_path / "nvs.bin", "--as", "nvs", "--nvs-keys", tmp_path / "keys.bin")
    assert_one_line_error(result, "wrong nvs_keys")


def test_nvs_keys_shows_fingerprint_not_keys(tmp_path: Path) -> None:
    keys = NvsKeys.generate()
    (tmp_path / "keys.bin").write_bytes(keys.encode())
    result = run(tmp_path / "keys.bin", "--as", "nvs-keys")
    assert result.exit_code == 0
    assert keys.fingerprint() in result.stdout
    assert keys.eky.hex() not in result.stdout and keys.tky.hex() not in result.stdout
    assert run_json(tmp_path / "keys.bin", "--as", "nvs-keys") == {
        "fingerprint": keys.fingerprint(), "crc_ok": True,
    }  # fmt: skip


def test_app_image_vector(vectors: Path) -> None:
    document = run_json(vectors / "hello-world-signed.bin", "--as", "image")
    assert document["chip"] == "esp32" and document["kind"] == "app"
    assert document["checksum_ok"] is True and document["sha256_ok"] is True
    desc = document["app_desc"]
    assert isinstance(desc, dict) and desc["project_name"] == "hello-world"
    result = run(vectors / "hello-world-signed.bin", "--as", "image")
    assert result.stdout.startswith("App image for esp32")


def test_signed_bootloader_signature_matches_espsecure_digest(vectors: Path) -> None:
    import espsecure

    with open(vectors / "rsa_secure_boot_signing_pubkey.pem", "rb") as key:
        expected = espsecure._digest_sbv2_public_key(key)
    document = run_json(vectors / "bootloader_signed_v2_rsa.bin", "--as", "image")
    assert document["kind"] == "bootloader"
    assert document["signatures"] == [
        {"index": 0, "scheme": "rsa3072", "key_digest": expected.hex(), "crc_ok": True,
         "verifies": True},
    ]  # fmt: skip
    shown = run(vectors / "bootloader_signed_v2_rsa.bin", "--as", "image").stdout
    assert "Secure Boot V2 signature blocks" in shown
    assert expected.hex()[:16] in shown.replace("│", "").replace(" ", "")
    assert "valid" in shown and "INVALID" not in shown


def test_image_for_another_chip_exits_2(vectors: Path) -> None:
    result = run(vectors / "bootloader_esp32c3.bin", "--as", "image", "--chip", "esp32")
    assert_one_line_error(result, "esp32c3", "not esp32")


def test_efuse_image_infers_esp32_from_size(tmp_path: Path) -> None:
    path = tmp_path / "efuse.bin"
    path.write_bytes(EfuseImage.blank("esp32").encode())
    document = run_json(path, "--as", "efuse")
    assert document["chip"] == "esp32"
    assert document["flash_encryption"] is False and document["secure_boot"] is False
    fields = document["fields"]
    assert isinstance(fields, dict) and fields["FLASH_CRYPT_CNT"] == 0


def test_efuse_image_of_ambiguous_size_needs_chip(tmp_path: Path) -> None:
    path = tmp_path / "efuse.bin"
    path.write_bytes(EfuseImage.blank("esp32s3").encode())
    assert_one_line_error(run(path, "--as", "efuse"), "--chip is needed")
    result = run(path, "--as", "efuse", "--chip", "esp32s3")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("eFuse (esp32s3")


@pytest.mark.parametrize("size", [0, 100, 0x3000])
def test_file_of_no_efuse_size_is_not_an_efuse_image(tmp_path: Path, size: int) -> None:
    path = tmp_path / "efuse.bin"
    path.write_bytes(bytes(size))
    result = run(path, "--as", "efuse")
    assert_one_line_error(result, f"eFuse image is {size} bytes", "esp32 288", "espefuse --virt")
    assert "--chip is needed" not in result.stderr


def test_image_of_an_unsupported_chip_names_its_chip_id(vectors: Path) -> None:
    result = run(vectors / "esp_idf_blink_esp32s2.bin", "--as", "image")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(
        "App image for chip id 2 (not a chip espfleet supports), no Secure Boot V2 signature\n"
    )


def test_empty_file_is_not_an_empty_partition_table(tmp_path: Path) -> None:
    path = tmp_path / "pt.bin"
    path.write_bytes(b"")
    assert_one_line_error(run(path, "--as", "partitions"), "0 bytes", "offset 0x0")


def test_flash_encrypted_nvs_keys_file_names_the_file_and_how_to_decrypt(
    tmp_path: Path,
) -> None:
    keys = NvsKeys.generate()
    (tmp_path / "nvs.bin").write_bytes(nvs.write(NAMESPACES, 0x6000, keys))
    sealed = flash_encryption.encrypt(keys.encode(), os.urandom(32), 0x1C000, "esp32")
    (tmp_path / "nvs_keys.bin").write_bytes(sealed)
    result = run(tmp_path / "nvs.bin", "--as", "nvs", "--nvs-keys", tmp_path / "nvs_keys.bin")
    assert_one_line_error(result, f"--nvs-keys {tmp_path / 'nvs_keys.bin'}: nvs_keys at offset",
                          "espsecure decrypt-flash-data")


def test_nvs_keys_option_only_for_nvs(tmp_path: Path) -> None:
    path = tmp_path / "x.bin"
    path.write_bytes(b"\xff" * 0x1000)
    assert_one_line_error(run(path, "--as", "otadata", "--nvs-keys", path), "--as nvs")


@pytest.mark.parametrize("chip", ["esp32", "esp32s3"])
def test_flash_encrypted_nvs_keys_decrypt_with_flash_key(tmp_path: Path, chip: str) -> None:
    keys = NvsKeys.generate()
    flash_key = os.urandom(32)
    sealed = flash_encryption.encrypt(keys.encode(), flash_key, 0x1C000, chip)
    (tmp_path / "nvs_keys.bin").write_bytes(sealed)
    (tmp_path / "fe.key").write_bytes(flash_key)
    args: list[str | Path] = [tmp_path / "nvs_keys.bin", "--as", "nvs-keys", "--chip", chip]
    assert_one_line_error(run(*args), "still flash-encrypted")
    document = run_json(*args, "--flash-key", tmp_path / "fe.key", "--address", "0x1c000")
    assert document["fingerprint"] == keys.fingerprint()
    wrong_address = run(*args, "--flash-key", tmp_path / "fe.key", "--address", "0x1d000")
    assert_one_line_error(wrong_address, "CRC32")


def test_flash_key_needs_address_and_chip(tmp_path: Path) -> None:
    (tmp_path / "k").write_bytes(os.urandom(32))
    result = run(tmp_path / "k", "--as", "nvs-keys", "--flash-key", tmp_path / "k")
    assert_one_line_error(result, "give all three")


def test_missing_file_exits_2(tmp_path: Path) -> None:
    assert_one_line_error(run(tmp_path / "nope.bin", "--as", "nvs"), "cannot read file")
