"""The one place where espfleet errors become exit codes.

* :class:`~espfleet.errors.InputError` (bad usage or input): exit 2
* any other :class:`~espfleet.errors.EspfleetError` (an operation failed): exit 1

Expected errors print one line, ``error: <message>``, on stderr and no traceback;
``espfleet --debug`` adds the traceback.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from typing import TypeVar

import click

from espfleet.errors import EspfleetError, InputError

__all__ = ["EXIT_FAILED", "EXIT_USAGE", "exit_code_for", "run_guarded"]

EXIT_FAILED = 1
EXIT_USAGE = 2

T = TypeVar("T")


def exit_code_for(error: EspfleetError) -> int:
    return EXIT_USAGE if isinstance(error, InputError) else EXIT_FAILED


def run_guarded(ctx: click.Context, body: Callable[[], T]) -> T:
    try:
        return body()
    except EspfleetError as error:
        debug = bool(getattr(ctx.obj, "debug", False))
        if debug:
            click.echo(traceback.format_exc(), err=True)
        click.echo(f"error: {error}", err=True)
        ctx.exit(exit_code_for(error))
        raise AssertionError("unreachable") from None
