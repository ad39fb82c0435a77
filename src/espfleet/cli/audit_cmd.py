"""`espfleet audit` (placeholder until its issue lands: it says so and fails)."""

from __future__ import annotations

import click

from espfleet.errors import EspfleetError


@click.command(name="audit")
def audit() -> None:
    """Not built yet."""
    raise EspfleetError("'espfleet audit' is not built yet in this version of espfleet")
