"""`espfleet init DIR`: create a fleet workspace (CA, server certificates, Secure Boot V2
signing key, registry, fleet.toml), atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from espfleet.chips import chip_names
from espfleet.cli._context import get_passphrase
from espfleet.cli._output import console, echo_json
from espfleet.workspace import Workspace
from espfleet.workspace.config import DEFAULT_HOSTS, KEY_POLICIES


@click.command(name="init")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--org", required=True, help="Organization name (O= of every certificate).")
@click.option(
    "--chip", type=click.Choice(chip_names()), default="esp32", show_default=True,
    help="Chip family of the product.",
)
@click.option(
    "--broker-host", "broker_hosts", multiple=True, metavar="NAME",
    help="DNS name or IP of the MQTT broker (repeatable; default: localhost and 127.0.0.1).",
)
@click.option(
    "--ota-host", "ota_hosts", multiple=True, metavar="NAME",
    help="DNS name or IP of the OTA HTTPS server (repeatable; default: the broker hosts).",
)
@click.option(
    "--key-policy", type=click.Choice(KEY_POLICIES), default="escrow", show_default=True,
    help="escrow: keep per-device keys encrypted in vault/; destroy: delete them after flashing.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def init(
    directory: Path,
    org: str,
    chip: str,
    broker_hosts: tuple[str, ...],
    ota_hosts: tuple[str, ...],
    key_policy: str,
    as_json: bool,
) -> None:
    """Create a fleet workspace in DIRECTORY (new or empty).

    The passphrase that encrypts every private key comes from ESPFLEET_PASSPHRASE or a
    prompt. Nothing is written unless the whole workspace could be built.
    """
    passphrase = get_passphrase(confirm=True, purpose="the new workspace's keys")
    hosts = broker_hosts or DEFAULT_HOSTS
    workspace = Workspace.create(
        directory,
        org=org,
        chip=chip,
        broker_hosts=hosts,
        ota_hosts=ota_hosts or hosts,
        key_policy=key_policy,
        passphrase=passphrase,
    )
    info = workspace.describe()
    if as_json:
        echo_json(info)
        return
    _print_summary(info)


def _print_summary(info: dict[str, Any]) -> None:
    console.print(f"[bold green]Created fleet workspace[/] {info['workspace']}")
    console.print(f"  org {info['org']}, chip {info['chip']}, key policy {info['key_policy']}")
    console.print(f"  root CA     {info['root_ca']['fingerprint_sha256']}")
    console.print(f"  issuing CA  {info['issuing_ca']['fingerprint_sha256']}")
    for name, server in info["servers"].items():
        console.print(f"  {name:<11} {', '.join(server['hosts'])}")
    sb = info["secure_boot"]
    console.print(f"  secure boot {sb['scheme']} key digest {sb['public_key_digest_sha256']}")
    console.print(
        "Keep ESPFLEET_PASSPHRASE safe: it decrypts every key. Next: "
        "`espfleet cert issue <device-id>` or `espfleet provision`."
    )
