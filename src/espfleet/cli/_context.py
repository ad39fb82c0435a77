"""State shared by every command: where the workspace is, whether to debug."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import click

from espfleet.errors import PassphraseError

__all__ = ["CliContext", "get_passphrase"]

PASSPHRASE_ENV = "ESPFLEET_PASSPHRASE"


@dataclass
class CliContext:
    workspace_option: Path | None
    debug: bool = False

    @property
    def workspace_dir(self) -> Path:
        """``--workspace``, else ``$ESPFLEET_WORKSPACE``, else the current directory."""
        return self.workspace_option if self.workspace_option is not None else Path.cwd()


def get_passphrase(*, confirm: bool = False, purpose: str = "the fleet's keys") -> bytes:
    """The workspace passphrase from ``$ESPFLEET_PASSPHRASE`` or a prompt; never argv."""
    value = os.environ.get(PASSPHRASE_ENV)
    if value is None:
        if not sys.stdin.isatty():
            raise PassphraseError(
                f"no passphrase for {purpose}: set {PASSPHRASE_ENV} or run in a terminal "
                "to be prompted"
            )
        value = click.prompt(
            f"Passphrase for {purpose}", hide_input=True, confirmation_prompt=confirm
        )
    if len(value) < 8:
        raise PassphraseError(
            f"the passphrase for {purpose} is shorter than 8 characters: choose a longer one"
        )
    return value.encode("utf-8")
