"""`espfleet inspect FILE --as KIND`: decode an on-flash artifact, for people or for JSON.

Like ``esptool image-info``, for every format espfleet writes: app and bootloader
images, partition tables, otadata, NVS (encrypted too, with ``--nvs-keys``), nvs_keys
and eFuse images as ``espefuse --virt`` stores them. A file that does not decode exits
with 2 and one ``error:`` line naming the offset.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from rich.table import Table
from rich.text import Text

from espfleet.audit.findings import printable
from espfleet.chips import CHIPS, chip_names
from espfleet.cli._output import console, echo_json
from espfleet.errors import EspfleetError, FormatError, InputError

KINDS = ("image", "partitions", "otadata", "nvs", "nvs-keys", "efuse")


@dataclass(frozen=True)
class _Options:
    chip: str | None
    nvs_keys: Path | None
    ota_slots: int
    #: NvsKeys taken from a device's vault entry (``--device``), instead of a file.
    device_nvs_keys: Any = None


@dataclass(frozen=True)
class Report:
    """What inspect shows: a JSON document, and the same as rich tables."""

    document: dict[str, Any]
    title: str
    tables: tuple[Table, ...]


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise InputError(f"cannot read {what} {path}: {error.strerror}") from None


def _table(title: str, *columns: str) -> Table:
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column, overflow="fold")
    return table


def _row(table: Table, *cells: str) -> None:
    """Add cells as plain, printable text: names, keys and values come from FILE, and
    rich markup (``[/x]``, ``[red]``) or a terminal escape sequence planted in them must
    neither style nor crash the output, nor reach the terminal."""
    table.add_row(*(Text(printable(cell)) for cell in cells))


def _hex(value: int) -> str:
    return f"{value:#x}"


def _partitions(data: bytes, _: _Options) -> Report:
    from espfleet.formats import partition_table

    table = partition_table.decode(data)
    rows = [
        {
            "name": p.name,
            "type": p.type_name,
            "subtype": p.subtype_name,
            "type_id": p.type,
            "subtype_id": p.subtype,
            "offset": p.offset,
            "size": p.size,
            "encrypted": p.encrypted,
            "readonly": p.readonly,
        }
        for p in table.entries
    ]
    out = _table("", "name", "type", "subtype", "offset", "size", "flags")
    for p in table.entries:
        flags = ", ".join(
            f for f, on in (("encrypted", p.encrypted), ("readonly", p.readonly)) if on
        )
        _row(out, p.name, p.type_name, p.subtype_name, _hex(p.offset), _hex(p.size), flags)
    title = f"Partition table: {len(rows)} entries, ends at {_hex(table.flash_end())}"
    return Report({"partitions": rows}, title, (out,))


def _otadata(data: bytes, options: _Options) -> Report:
    from espfleet.formats import otadata

    ota = otadata.decode(data)
    erased = _erased_sectors(data)
    entries: list[dict[str, Any] | None] = []
    out = _table("", "sector", "ota_seq", "state", "slot", "label")
    for sector, entry in enumerate(ota.entries):
        if entry is None:
            entries.append(None)
            state = "erased" if sector in erased else "bad CRC: ignored by the bootloader"
            _row(out, str(sector), "-", state, "-", "")
            continue
        slot = entry.slot(options.ota_slots)
        entries.append(
            {"seq": entry.seq, "state": entry.state.name, "slot": slot, "label": entry.label.hex()}
        )
        _row(out, str(sector), str(entry.seq), entry.state.name, f"ota_{slot}", entry.label.hex())
    boot = otadata.boot_slot(ota, options.ota_slots)
    document = {"entries": entries, "active_sector": ota.active_index(), "boot_slot": boot}
    target = f"ota_{boot}" if boot is not None else "factory (or ota_0 without one)"
    title = f"otadata: the bootloader boots {target} (with {options.ota_slots} OTA slots)"
    if all(entry is None for entry in entries) and not erased:
        title += (
            "; neither sector is valid nor erased: if FILE is flash-encrypted (a bundle's "
            "otadata.bin, a dump), decrypt it with --flash-key, --chip and --address"
        )
    return Report(document, title, (out,))


def _erased_sectors(data: bytes) -> set[int]:
    """Sectors whose entry is still erased (0xFF), as a fresh chip's otadata is."""
    from espfleet.formats.otadata import SECTOR_SIZE

    return {sector for sector in range(2) if data[sector * SECTOR_SIZE :][:32] == b"\xff" * 32}


def _keys_from(options: _Options) -> Any:
    from espfleet.formats import nvs_keys

    if options.device_nvs_keys is not None:
        return options.device_nvs_keys
    if options.nvs_keys is None:
        return None
    try:
        return nvs_keys.decode(_read(options.nvs_keys, "nvs_keys file"))
    except FormatError as error:
        raise FormatError(
            f"--nvs-keys {options.nvs_keys}: {error}. A bundle's nvs_keys.bin is "
            "flash-encrypted: decrypt it first, e.g. espsecure decrypt-flash-data "
            "--keyfile KEY --address <nvs_keys offset> -o nvs_keys.plain.bin nvs_keys.bin",
            error.offset,
        ) from None


def _nvs(data: bytes, options: _Options) -> Report:
    from espfleet.formats import nvs

    keys = _keys_from(options)
    namespaces = nvs.read(data, keys)
    out = _table("", "namespace", "key", "type", "value")
    for ns, entries in namespaces.items():
        for key, value in entries.items():
            raw = value.value
            if isinstance(raw, bytes):
                more = "…" if len(raw) > 32 else ""
                shown = f"{raw[:32].hex()}{more} ({len(raw)} bytes)"
            else:
                shown = str(raw)
            _row(out, ns, key, value.type, shown)
    count = sum(len(entries) for entries in namespaces.values())
    how = "encrypted, decrypted with the given nvs_keys" if keys is not None else "plaintext"
    title = f"NVS ({how}): {len(namespaces)} namespaces, {count} keys"
    return Report(nvs.to_json(namespaces), title, (out,))


def _nvs_keys(data: bytes, _: _Options) -> Report:
    from espfleet.formats import nvs_keys

    keys = nvs_keys.decode(data)
    document = {"fingerprint": keys.fingerprint(), "crc_ok": True}
    title = f"nvs_keys: valid (CRC32 ok), fingerprint {keys.fingerprint()}; key bytes not shown"
    return Report(document, title, ())


def _image(data: bytes, options: _Options) -> Report:
    from espfleet.formats import app_image

    image = app_image.parse(data)
    if options.chip is not None and image.chip != options.chip:
        raise InputError(
            f"the image is for chip id {image.chip_id} ({image.chip or 'unsupported'}), "
            f"not {options.chip}: use the image built for {options.chip}"
        )
    document: dict[str, Any] = {
        "chip": image.chip,
        "chip_id": image.chip_id,
        "kind": "bootloader" if image.is_bootloader else "app",
        "min_rev_full": image.min_rev_full,
        "max_rev_full": image.max_rev_full,
        "entry": image.entry,
        "segments": [
            {"load_address": s.load_address, "length": s.length, "offset": s.data_offset}
            for s in image.segments
        ],
        "checksum_ok": image.checksum_ok,
        "hash_appended": image.hash_appended,
        "sha256_ok": image.sha256_ok,
        "image_length": image.image_length,
        "sha256": hashlib.sha256(data[: image.image_length]).hexdigest(),
        "app_desc": None,
        "signatures": _signatures(data),
    }
    summary = _table("", "field", "value")
    for name in ("chip", "kind", "min_rev_full", "max_rev_full", "checksum_ok", "sha256_ok"):
        _row(summary, name, str(document[name]))
    _row(summary, "entry", _hex(image.entry))
    _row(summary, "sha256", document["sha256"])
    if image.app_desc is not None:
        desc = image.app_desc
        document["app_desc"] = {
            "project_name": desc.project_name,
            "version": desc.version,
            "secure_version": desc.secure_version,
            "idf_ver": desc.idf_ver,
            "date": desc.date,
            "time": desc.time,
            "app_elf_sha256": desc.app_elf_sha256.hex(),
        }
        for name, value in document["app_desc"].items():
            _row(summary, name, str(value))
    segments = _table("Segments", "#", "load address", "length", "file offset")
    for n, s in enumerate(image.segments):
        _row(segments, str(n), _hex(s.load_address), _hex(s.length), _hex(s.data_offset))
    signatures = _table(
        "Secure Boot V2 signature blocks", "#", "scheme", "key digest (eFuse)", "CRC", "signature"
    )
    for block in document["signatures"]:
        _row(signatures,
            str(block["index"]), block["scheme"], block["key_digest"],
            "ok" if block["crc_ok"] else "BAD", "valid" if block["verifies"] else "INVALID",
        )  # fmt: skip
    signed = len(document["signatures"])
    chip = image.chip or f"chip id {image.chip_id} (not a chip espfleet supports)"
    title = f"{document['kind'].capitalize()} image for {chip}" + (
        f", {signed} Secure Boot V2 signature(s)" if signed else ", no Secure Boot V2 signature"
    )
    tables = (summary, segments, signatures) if signed else (summary, segments)
    return Report(document, title, tables)


def _signatures(data: bytes) -> list[dict[str, Any]]:
    from espfleet.formats import secure_boot

    try:
        blocks = secure_boot.signature_blocks(data)
        content = data[: secure_boot.signed_length(data)]
    except EspfleetError:
        return []
    return [
        {
            "index": b.index,
            "scheme": b.scheme,
            "key_digest": b.key_digest.hex(),
            "crc_ok": b.crc_ok,
            "verifies": b.verifies(content),
        }
        for b in blocks
    ]


def _efuse_chip(data: bytes, chip: str | None) -> str:
    if chip is not None:
        return chip
    matches = [name for name, facts in CHIPS.items() if facts.efuse_file_size == len(data)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise InputError(
            f"--chip is needed for an eFuse image of {len(data)} bytes "
            f"(it could be {' or '.join(matches)})"
        )
    sizes = ", ".join(f"{name} {facts.efuse_file_size}" for name, facts in CHIPS.items())
    raise FormatError(
        f"eFuse image is {len(data)} bytes, which no supported chip has ({sizes} bytes): "
        "pass the file espefuse --virt --path-efuse-file wrote",
        len(data),
    )


def _efuse(data: bytes, options: _Options) -> Report:
    from espfleet.formats.efuse import EfuseImage

    image = EfuseImage.decode(_efuse_chip(data, options.chip), data)
    fields = {
        name: value.hex() if isinstance(value, bytes) else value
        for name, value in image.fields().items()
    }
    digests = [
        {"slot": d.slot, "block": d.block, "digest": d.digest.hex(), "revoked": d.revoked}
        for d in image.secure_boot_digests()
    ]
    document = {
        "chip": image.chip,
        "chip_revision": image.chip_revision,
        "flash_encryption": image.crypt_cnt_enabled,
        "secure_boot": image.secure_boot_enabled,
        "secure_boot_digests": digests,
        "fields": fields,
    }
    out = _table("", "field", "value")
    for name, value in fields.items():
        _row(out, name, str(value))
    title = (
        f"eFuse ({image.chip} v{image.chip_revision // 100}.{image.chip_revision % 100}): "
        f"flash encryption {'on' if image.crypt_cnt_enabled else 'off'}, secure boot "
        f"{'on' if image.secure_boot_enabled else 'off'}, {len(digests)} key digest(s)"
    )
    return Report(document, title, (out,))


def _decrypt(data: bytes, key_path: Path | None, address: str | None, chip: str | None) -> bytes:
    from espfleet.formats import flash_encryption

    if key_path is None or address is None or chip is None:
        raise InputError("--flash-key, --address and --chip go together: give all three")
    try:
        offset = int(address, 0)
    except ValueError:
        raise InputError(f"--address {address!r} is not a number (e.g. 0x1c000)") from None
    return flash_encryption.decrypt(data, _read(key_path, "flash-encryption key"), offset, chip)


@dataclass(frozen=True)
class _DeviceArtifact:
    """FILE as one artifact of a device's bundle, with that device's vault secrets."""

    device_id: str
    chip: str
    offset: int
    encrypted: bool
    flash_key: bytes
    nvs_keys: Any


def _device_artifact(file: Path, device_id: str, workspace_dir: Path) -> _DeviceArtifact:
    from espfleet.cli._context import get_passphrase
    from espfleet.device_id import parse_device_id
    from espfleet.formats.nvs_keys import NvsKeys
    from espfleet.provisioning.bundle import load_bundle
    from espfleet.provisioning.vault import Vault
    from espfleet.workspace import Workspace

    device_id = parse_device_id(device_id).value
    workspace = Workspace.open(workspace_dir)
    bundle = load_bundle(workspace.bundles_dir / device_id)
    manifest = bundle.manifest
    artifact = next((a for a in manifest.artifacts if a.file == file.name), None)
    if artifact is None:
        names = ", ".join(a.file for a in manifest.artifacts)
        raise InputError(
            f"{file.name} is not an artifact of {device_id}'s bundle (it has: {names}); "
            "--device reads the offset and keys of that bundle's own files"
        )
    vault = Vault.open(workspace.vault_dir, get_passphrase(purpose="the key vault"), create=False)
    sealed = bundle.sealed_secrets
    secrets = vault.unseal(device_id, sealed) if sealed else vault.load(device_id)
    return _DeviceArtifact(
        device_id, manifest.chip, artifact.offset, artifact.encrypted,
        secrets.flash_encryption_key, NvsKeys.from_raw(secrets.nvs_keys),
    )


DECODERS: dict[str, Callable[[bytes, _Options], Report]] = {
    "image": _image,
    "partitions": _partitions,
    "otadata": _otadata,
    "nvs": _nvs,
    "nvs-keys": _nvs_keys,
    "efuse": _efuse,
}


@click.command(name="inspect")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--as", "kind", type=click.Choice(KINDS), required=True, help="What FILE holds.")
@click.option("--chip", type=click.Choice(chip_names()), help="Chip (eFuse images; checks images).")
@click.option(
    "--nvs-keys",
    "nvs_keys_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Decrypted nvs_keys partition, to read an encrypted NVS.",
)
@click.option(
    "--ota-slots", type=click.IntRange(1, 16), default=2, show_default=True,
    help="OTA app slots in the partition table (otadata).",
)  # fmt: skip
@click.option(
    "--flash-key",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Flash-encryption key: FILE is flash-encrypted (needs --chip and --address).",
)
@click.option(
    "--address", type=str, default=None, help="Flash offset FILE was read from (with --flash-key)."
)
@click.option(
    "--device", "device_id", default=None,
    help="FILE is an artifact of this device's bundle: decrypt it (and its NVS) with the "
    "device's keys from the workspace vault, at the offset the manifest records.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@click.pass_context
def inspect(
    ctx: click.Context,
    file: Path,
    kind: str,
    chip: str | None,
    nvs_keys_path: Path | None,
    ota_slots: int,
    flash_key: Path | None,
    address: str | None,
    device_id: str | None,
    as_json: bool,
) -> None:
    """Decode FILE as an image, partition table, otadata, NVS, nvs_keys or eFuse image.

    A flash-encrypted artifact (a bundle's nvs_keys, otadata, app, ...) is decrypted
    first with --flash-key, --chip and the --address it lives at; or, for a bundle in
    the workspace, with --device ID (keys from the vault, offset from the manifest).
    """
    if nvs_keys_path is not None and kind != "nvs":
        raise InputError("--nvs-keys only applies to --as nvs")
    if device_id is not None and (flash_key or address or nvs_keys_path):
        raise InputError("--device takes the keys and offset from the bundle: leave out "
                         "--flash-key, --address and --nvs-keys")
    data = _read(file, "file")
    options = _Options(chip, nvs_keys_path, ota_slots)
    if device_id is not None:
        found = _device_artifact(file, device_id, ctx.obj.workspace_dir)
        options = _Options(chip or found.chip, None, ota_slots, found.nvs_keys)
        if found.encrypted:
            from espfleet.formats import flash_encryption

            data = flash_encryption.decrypt(data, found.flash_key, found.offset, found.chip)
    elif flash_key is not None or address is not None:
        data = _decrypt(data, flash_key, address, chip)
    try:
        report = DECODERS[kind](data, options)
    except FormatError as error:
        if device_id is not None:
            raise FormatError(f"{error} [decrypted with {device_id}'s vault key]",
                              error.offset) from None
        if flash_key is None:
            raise
        raise FormatError(
            f"{error} [FILE was decrypted with --flash-key {flash_key} at --address {address} "
            "first: a wrong key, chip or address decrypts to garbage; use this device's key "
            "and the offset FILE is flashed at]",
            error.offset,
        ) from None
    if as_json:
        echo_json(report.document)
        return
    console.print(report.title)
    for table in report.tables:
        console.print(table)
