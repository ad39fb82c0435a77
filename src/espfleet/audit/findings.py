"""What an audit reports: findings with a severity, where they are, and how to fix them.

Two shapes: :class:`Finding` for a flash read-out (an offset and a length in the
dump) and :class:`EfuseFinding` for the eFuse posture (the eFuse, the value found,
the value required and the espefuse command that fixes it, or why none can).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from espfleet.errors import InputError

__all__ = ["EfuseFinding", "Finding", "Severity", "failing", "printable", "worst"]


class Severity(IntEnum):
    """Ordered: a ``--fail-on`` threshold compares with ``>=``."""

    INFO = 0
    LOW = 1
    MEDIUM = 2
    HIGH = 3
    CRITICAL = 4

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> Severity:
        try:
            return cls[text.strip().upper()]
        except KeyError:
            choices = ", ".join(s.label for s in cls)
            raise InputError(f"unknown severity {text!r}: use one of {choices}") from None


@dataclass(frozen=True)
class Finding:
    """One problem in a flash dump, at ``offset`` (bytes from the start of flash)."""

    severity: Severity
    kind: str
    offset: int
    length: int
    message: str
    fix: str

    def __post_init__(self) -> None:
        if self.offset < 0 or self.length < 0:
            raise ValueError(f"finding {self.kind}: negative offset or length")
        if not self.message or not self.fix:
            raise ValueError(f"finding {self.kind}: a finding needs a message and a fix")

    def to_json(self) -> dict[str, Any]:
        return {
            "severity": self.severity.label,
            "kind": self.kind,
            "offset": self.offset,
            "offset_hex": f"0x{self.offset:x}",
            "length": self.length,
            "message": self.message,
            "fix": self.fix,
        }


@dataclass(frozen=True)
class EfuseFinding:
    """One eFuse that is not where the chip table and the mode want it.

    ``command`` is the espefuse command line that fixes it, or None when no command
    can (the chip is locked); ``fix`` then says why and what to do instead.
    """

    severity: Severity
    kind: str
    efuse: str
    found: str
    required: str
    message: str
    fix: str
    command: str | None = None

    def __post_init__(self) -> None:
        if not self.efuse or not self.message or not self.fix:
            raise ValueError(f"eFuse finding {self.kind}: needs an eFuse, a message and a fix")

    def to_json(self) -> dict[str, Any]:
        return {
            "severity": self.severity.label,
            "kind": self.kind,
            "efuse": self.efuse,
            "found": self.found,
            "required": self.required,
            "message": self.message,
            "fix": self.fix,
            "command": self.command,
        }


def printable(text: str) -> str:
    """``text`` with control characters shown as ``?``: a dump is attacker-controlled,
    and a planted escape sequence or line break must not reach a terminal or a log."""
    return "".join(c if c.isprintable() else "?" for c in text)


def worst(findings: Iterable[Finding | EfuseFinding]) -> Severity | None:
    """The highest severity among ``findings``, None when there are none."""
    return max((f.severity for f in findings), default=None)


def failing(
    findings: Iterable[Finding | EfuseFinding], threshold: Severity
) -> list[Finding | EfuseFinding]:
    """The findings at or above ``threshold`` (what a factory line gates on)."""
    return [f for f in findings if f.severity >= threshold]
