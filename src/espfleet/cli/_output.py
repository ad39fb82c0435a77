"""Output helpers: JSON for machines, rich for people."""

from __future__ import annotations

import json
from typing import Any

import click
from rich.console import Console

__all__ = ["console", "echo_json", "err_console"]

console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def echo_json(data: Any) -> None:
    """Print ``data`` as indented, key-sorted JSON on stdout."""
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))
