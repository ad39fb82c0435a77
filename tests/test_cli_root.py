from __future__ import annotations

import pytest
from click.testing import CliRunner

import espfleet
from espfleet.cli import COMMANDS, main
from espfleet.cli._errors import exit_code_for
from espfleet.errors import EspfleetError, FormatError, InputError, WorkspaceError


def test_version() -> None:
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"espfleet, version {espfleet.__version__}"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_help(name: str) -> None:
    result = CliRunner().invoke(main, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage: main" in result.output or "Usage: espfleet" in result.output


def test_help_lists_every_command() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for name in COMMANDS:
        assert name in result.output


def test_input_errors_exit_2_and_failures_exit_1() -> None:
    assert exit_code_for(InputError("x")) == 2
    assert exit_code_for(FormatError("x", offset=3)) == 2
    assert exit_code_for(WorkspaceError("x")) == 1
    assert exit_code_for(EspfleetError("x")) == 1
