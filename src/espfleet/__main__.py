"""``python -m espfleet`` runs the command line."""

from espfleet.cli import main

main(prog_name="espfleet")
