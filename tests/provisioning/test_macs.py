"""MAC lists with line-numbered errors; locally administered allocation that never overlaps."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from espfleet.errors import InputError
from espfleet.provisioning.macs import (
    LOCAL_PREFIX,
    MAC_STRIDE,
    allocate_macs,
    is_locally_administered,
    parse_mac_list,
)


def test_parse_plain_list_with_comments_and_wifi_columns() -> None:
    text = (
        "# factory lot 7\n24:a1:60:0a:1b:2c\n\n24a1600a1b30,lab,s3cret pass\n"
        "24-A1-60-0A-1B-34,guest\n"
    )
    entries = parse_mac_list(text)
    assert [e.line for e in entries] == [2, 4, 5]
    assert entries[0].mac == bytes.fromhex("24a1600a1b2c")
    assert (entries[1].wifi_ssid, entries[1].wifi_pass) == ("lab", "s3cret pass")
    assert (entries[2].wifi_ssid, entries[2].wifi_pass) == ("guest", None)
    assert "s3cret" not in repr(entries[1])


def test_parse_with_header_in_any_column_order() -> None:
    entries = parse_mac_list("wifi_ssid,mac\nlab,24:a1:60:0a:1b:2c\n")
    assert entries[0].mac.hex() == "24a1600a1b2c" and entries[0].wifi_ssid == "lab"
    aliased = parse_mac_list("Base_MAC,SSID,Password\n24:a1:60:0a:1b:2c,lab,pw-123456\n")
    assert (aliased[0].mac.hex(), aliased[0].wifi_ssid, aliased[0].wifi_pass) == (
        "24a1600a1b2c", "lab", "pw-123456")


def test_malformed_line_reports_its_number() -> None:
    with pytest.raises(InputError, match=r"macs.csv line 3: '24:a1:60:0a:1b' is not a MAC"):
        parse_mac_list("24:a1:60:0a:1b:2c\n# x\n24:a1:60:0a:1b\n", source="macs.csv")


def test_duplicate_mac_names_both_lines() -> None:
    with pytest.raises(InputError, match=r"line 3: duplicate MAC .* \(also on line 1\)"):
        parse_mac_list("24:a1:60:0a:1b:2c\n24:a1:60:0a:1b:30\n24a1600a1b2c\n")


def test_multicast_password_without_ssid_and_empty_list_are_refused() -> None:
    with pytest.raises(InputError, match=r"line 1: .* multicast"):
        parse_mac_list("01:00:5e:00:00:01\n")
    with pytest.raises(InputError, match="line 1: a Wi-Fi password without an SSID"):
        parse_mac_list("24:a1:60:0a:1b:2c,,pw\n")
    with pytest.raises(InputError, match="lists no MAC"):
        parse_mac_list("# nothing\n\n")
    with pytest.raises(InputError, match="line 1: unknown column 'serial'"):
        parse_mac_list("mac,serial\n")


def test_allocation_is_local_spaced_and_continues_after_used() -> None:
    first = allocate_macs(3, [])
    assert first[0] == LOCAL_PREFIX + bytes(3)
    assert all(is_locally_administered(m) and not m[0] & 1 for m in first)
    more = allocate_macs(2, [*first, bytes.fromhex("24a1600a1b2c")])
    assert int.from_bytes(more[0][3:], "big") == 3 * MAC_STRIDE


def test_allocation_refuses_bad_count_and_exhaustion() -> None:
    with pytest.raises(InputError, match="at least 1"):
        allocate_macs(0, [])
    with pytest.raises(InputError, match="has room for 1 more"):
        allocate_macs(2, [LOCAL_PREFIX + (0xFFFFF8).to_bytes(3, "big")])


@given(
    used=st.lists(st.integers(0, 0xFFFF).map(lambda n: LOCAL_PREFIX + n.to_bytes(3, "big"))),
    count=st.integers(1, 50),
)
def test_allocated_interface_ranges_never_overlap_used_ones(used: list[bytes], count: int) -> None:
    new = allocate_macs(count, used)
    taken = {int.from_bytes(m[3:], "big") + k for m in used for k in range(MAC_STRIDE)}
    for mac in new:
        for k in range(MAC_STRIDE):
            assert int.from_bytes(mac[3:], "big") + k not in taken
    assert len(set(new)) == count


@given(st.lists(st.binary(min_size=6, max_size=6).map(lambda b: bytes([b[0] & 0xFE]) + b[1:]),
                unique=True, min_size=1, max_size=20))
def test_mac_list_round_trip(macs: list[bytes]) -> None:
    text = "\n".join(":".join(f"{x:02x}" for x in m) for m in macs)
    assert [e.mac for e in parse_mac_list(text)] == macs


def test_spreadsheet_export_with_bom_crlf_and_semicolons() -> None:
    """Excel's "CSV UTF-8" starts with a byte-order mark (the header read as '\\ufeffmac'
    and line 1 was refused as a MAC); many locales separate with ';'."""
    bom = parse_mac_list("\ufeffmac,wifi_ssid,wifi_pass\r\n24:a1:60:0a:1b:2c,lab,pa;ss\r\n")
    assert bom[0].mac.hex() == "24a1600a1b2c"
    assert (bom[0].line, bom[0].wifi_ssid, bom[0].wifi_pass) == (2, "lab", "pa;ss")
    semi = parse_mac_list("\ufeffMAC;SSID;Password\n24:a1:60:0a:1b:2c;lab;pa,ss\n24a1600a1b30\n")
    assert [e.mac.hex() for e in semi] == ["24a1600a1b2c", "24a1600a1b30"]
    assert (semi[0].wifi_ssid, semi[0].wifi_pass) == ("lab", "pa,ss")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("24:a1:60:0a:1b:2c," + "s" * 33, "is 33 bytes; an SSID has at most 32"),
        ("24:a1:60:0a:1b:2c,caf\u00e9" + "x" * 28, "is 33 bytes; an SSID has at most 32"),
        ("24:a1:60:0a:1b:2c,lab," + "p" * 64, "at most 63 characters"),
        ("24:a1:60:0a:1b:2c,lab," + "p" * 65, "is 65 bytes"),
    ],
)
def test_wifi_credentials_a_device_cannot_use_are_refused_with_the_line(
    line: str, message: str
) -> None:
    with pytest.raises(InputError, match=f"macs.csv line 2: .*{message}"):
        parse_mac_list("24a1600a1b30\n" + line + "\n", source="macs.csv")


def test_wifi_limits_are_inclusive() -> None:
    entries = parse_mac_list(
        "24:a1:60:0a:1b:2c," + "s" * 32 + "," + "p" * 63 + "\n24a1600a1b30,lab," + "ab" * 32
    )
    assert len(entries[0].wifi_ssid or "") == 32 and len(entries[1].wifi_pass or "") == 64
