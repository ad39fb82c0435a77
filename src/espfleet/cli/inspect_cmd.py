"""`espfleet inspect` (placeholder until its issue lands: it says so and fails)."""

from __future__ import annotations

import click

from espfleet.errors import EspfleetError


@click.command(name="inspect")
def inspect() -> None:
    """Not built yet."""
    raise EspfleetError("'espfleet inspect' is not built yet in this version of espfleet")
