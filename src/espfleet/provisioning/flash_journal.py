"""The per-device flash journal: ``bundles/<id>/flash-journal.json``.

Records, atomically after every step, what ``espfleet flash`` completed on which
chip, so that a failed or interrupted run reports exactly where it stopped and a
re-run can resume. The chip's own eFuses and flash stay the authority on what is
done; the journal adds the one fact a chip cannot tell: that *this* host started
burning *this* device's key into it (a read-protected key cannot be compared).
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from espfleet._io import atomic_write_text
from espfleet.errors import FlashError
from espfleet.provisioning.locks import directory_lock

__all__ = ["JOURNAL_NAME", "FlashJournal"]

JOURNAL_NAME = "flash-journal.json"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass
class FlashJournal:
    """Mutable journal of one device; every change is saved at once."""

    path: Path
    device_id: str
    data: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, bundle_dir: Path, device_id: str) -> FlashJournal:
        path = Path(bundle_dir) / JOURNAL_NAME
        try:
            data = json.loads(path.read_text("utf-8"))
        except FileNotFoundError:
            data = {}
        except ValueError as error:
            raise FlashError(
                f"{path} is damaged ({error}): move it aside and re-run `espfleet flash` (the "
                "chip's eFuses decide what is done; a used key block will then be refused)"
            ) from None
        if data and data.get("device_id") != device_id:
            raise FlashError(f"{path} belongs to {data.get('device_id')!r}, not {device_id}")
        if not data:
            data = {"v": 1, "device_id": device_id, "status": "new", "steps": []}
        return cls(path, device_id, data)

    @property
    def status(self) -> str:
        return str(self.data.get("status", "new"))

    @property
    def completed(self) -> list[str]:
        return [str(s["step"]) for s in self.data.get("steps", [])]

    def exclusive(self) -> contextlib.AbstractContextManager[None]:
        """Hold the device's flash lock (on the bundle directory itself, so no file is
        created): two runs on one device would race the journal and, on two ports,
        could flash two chips with one identity; `espfleet provision` takes the same
        lock before it rebuilds or removes the bundle."""
        path = self.path.parent
        return directory_lock(path, FlashError(
            f"another `espfleet flash {self.device_id}` (or an `espfleet provision` "
            f"rebuilding its bundle) is running (it holds {path}): wait for it to finish, "
            "then run this command again; nothing was changed"
        ), replaced=FlashError(
            f"the bundle {path} was replaced or removed (by `espfleet provision`) while "
            f"this run started: run `espfleet flash {self.device_id}` again; nothing was "
            "changed"
        ))

    @property
    def burn_started(self) -> bool:
        """True if a run began burning the plan into some chip."""
        return bool(self.data.get("burn_started_mac"))

    def started_burning(self, mac: str) -> bool:
        """True if an earlier run began burning the plan into the chip with ``mac``."""
        return self.data.get("burn_started_mac") == mac

    def begin(self, *, port: str, mac: str) -> None:
        self.data.update(status="in_progress", port=port, mac=mac, error=None)
        self.data.setdefault("started", _now())
        self._save()

    def mark_burn_started(self, mac: str) -> None:
        self.data["burn_started_mac"] = mac
        self._save()

    def mark(self, step: str) -> None:
        if step not in self.completed:
            self.data.setdefault("steps", []).append({"step": step, "at": _now()})
        self._save()

    def finish(self, status: str, error: str | None = None) -> None:
        self.data.update(status=status, error=error)
        self._save()

    def _save(self) -> None:
        self.data["updated"] = _now()
        atomic_write_text(self.path, json.dumps(self.data, indent=2, sort_keys=True) + "\n")
