"""``espfleet --help`` lists the commands without importing them."""

from __future__ import annotations

import subprocess
import sys
from unittest import mock

import click
from click.testing import CliRunner

from espfleet.cli import COMMANDS, SUMMARIES, _LazyGroup, main


def test_summaries_name_every_command() -> None:
    assert list(SUMMARIES) == list(COMMANDS)


def test_help_listing_is_what_click_makes_from_the_commands() -> None:
    lazy = CliRunner().invoke(main, ["--help"], terminal_width=80)
    with mock.patch.object(_LazyGroup, "format_commands", click.Group.format_commands):
        eager = CliRunner().invoke(main, ["--help"], terminal_width=80)
    assert lazy.exit_code == eager.exit_code == 0
    assert lazy.output == eager.output


def test_help_imports_no_command_module() -> None:
    code = (
        "import sys\n"
        "from espfleet.cli import main\n"
        "try:\n"
        "    main(['--help'], prog_name='espfleet')\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(sorted(m for m in sys.modules if m.endswith('_cmd') or 'sqlalchemy' in m"
        " or m.startswith(('espfleet.workspace', 'espfleet.provisioning'))))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip().splitlines()[-1] == "[]"
