"""`espfleet init` (placeholder until its issue lands: it says so and fails)."""

from __future__ import annotations

import click

from espfleet.errors import EspfleetError


@click.command(name="init")
def init() -> None:
    """Not built yet."""
    raise EspfleetError("'espfleet init' is not built yet in this version of espfleet")
