"""`espfleet flash` (placeholder until its issue lands: it says so and fails)."""

from __future__ import annotations

import click

from espfleet.errors import EspfleetError


@click.command(name="flash")
def flash() -> None:
    """Not built yet."""
    raise EspfleetError("'espfleet flash' is not built yet in this version of espfleet")
