"""`espfleet cert` (placeholder until its issue lands: it says so and fails)."""

from __future__ import annotations

import click

from espfleet.errors import EspfleetError


@click.command(name="cert")
def cert() -> None:
    """Not built yet."""
    raise EspfleetError("'espfleet cert' is not built yet in this version of espfleet")
