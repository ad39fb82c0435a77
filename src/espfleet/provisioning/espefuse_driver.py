"""espefuse in-process: read a chip's eFuse state and execute eFuse plan steps.

Works over any object espefuse accepts as ``esp``: a connected
:class:`esptool.loader.ESPLoader` (a serial port, ``rfc2217://`` or ``socket://``) or
espefuse's own ``EmulateEfuseController`` over a ``--virt`` file. Every call builds
fresh espefuse commands, so the state it reads is what the chip holds now.

Key material is handed to espefuse as in-memory file objects; it never touches disk.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from espfleet.errors import FlashError
from espfleet.provisioning.efuse_plan import EfuseStep

__all__ = ["EfuseDriver", "EfuseField", "EfuseState", "silenced_esptool"]


@dataclass(frozen=True)
class EfuseField:
    """One eFuse field as espefuse reports it."""

    name: str
    #: Raw value: ``int`` (bool/uint fields) or ``bytes`` (blocks, keys, MAC) in the
    #: order they were burned and espefuse prints them.
    raw: int | bytes
    #: espefuse's display value (e.g. ``"XTS_AES_128_KEY"`` for a key purpose).
    value: str
    readable: bool
    writeable: bool

    @property
    def as_int(self) -> int:
        return self.raw if isinstance(self.raw, int) else int.from_bytes(self.raw, "little")

    @property
    def is_blank(self) -> bool:
        return self.as_int == 0


@dataclass(frozen=True)
class EfuseState:
    """A read-only snapshot of every eFuse field of one chip."""

    chip: str
    revision: int
    fields: Mapping[str, EfuseField]
    #: Every alternative name (``flash_encryption``, ``KEY0``, ...) -> the field name.
    aliases: Mapping[str, str] = field(default_factory=dict)
    #: Key block name -> the name of its key-purpose field (absent on ESP32).
    key_purpose_fields: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.fields:
            raise FlashError(f"the eFuse state of {self.chip} has no fields: re-read the chip")

    def name_of(self, name: str) -> str:
        if name in self.fields:
            return name
        try:
            return self.aliases[name]
        except KeyError:
            raise FlashError(
                f"eFuse {name!r} does not exist on {self.chip}: the bundle's eFuse plan was "
                "made for another chip; rebuild it with `espfleet provision`"
            ) from None

    def get(self, name: str) -> EfuseField:
        return self.fields[self.name_of(name)]

    def purpose_of(self, block: str) -> str | None:
        """The key purpose burned for ``block`` (None where the chip has no purposes)."""
        purpose_field = self.key_purpose_fields.get(self.name_of(block))
        return None if purpose_field is None else self.fields[purpose_field].value

    def to_json(self) -> dict[str, Any]:
        return {
            "chip": self.chip,
            "revision": self.revision,
            "fields": {
                f.name: {
                    "raw": f.raw.hex() if isinstance(f.raw, bytes) else f.raw,
                    "readable": f.readable,
                    "writeable": f.writeable,
                }
                for f in self.fields.values()
            },
        }


@contextlib.contextmanager
def silenced_esptool(enabled: bool = True) -> Iterator[None]:
    """Silence esptool/espefuse's console output for the duration (they print a lot)."""
    from esptool.logger import log

    if not enabled:
        yield
        return
    previous = getattr(log, "_verbosity", None)
    log.set_verbosity("silent")
    try:
        yield
    finally:
        if previous is not None:
            log.set_verbosity(previous)


class EfuseDriver:
    """Reads and burns the eFuses of one connected (or virtual) chip."""

    def __init__(self, esp: Any, chip: str, *, quiet: bool = True) -> None:
        self._esp = esp
        self.chip = chip
        self.quiet = quiet

    @classmethod
    def virtual(cls, chip: str, efuse_file: Path) -> EfuseDriver:
        """A driver over an ``espefuse --virt`` file (created blank if missing)."""
        import espefuse

        esp = espefuse.get_esp(chip=chip, virt=True, virt_efuse_file=str(efuse_file))
        return cls(esp, chip)

    def _commands(self) -> Any:
        import espefuse
        import esptool

        try:
            commands = espefuse.init_commands(esp=self._esp, do_not_confirm=True)
        except (esptool.FatalError, OSError) as error:
            raise FlashError(
                f"espefuse could not read the eFuses of the {self.chip}: {error}; check the "
                "connection and run `espfleet flash` again (nothing was burned)"
            ) from error
        commands.efuses.postpone = True
        return commands

    def read_state(self) -> EfuseState:
        """Snapshot every field (read-only)."""
        with silenced_esptool(self.quiet):
            return self._read_state()

    def _read_state(self) -> EfuseState:
        efuses = self._commands().efuses
        fields: dict[str, EfuseField] = {}
        aliases: dict[str, str] = {}
        for item in efuses:
            raw = item.get_raw()
            # espefuse keeps byte fields in bit-stream order; reverse them to the order
            # they were burned in and espefuse prints (a digest reads as the digest).
            raw_value: int | bytes = raw[::-1] if isinstance(raw, bytes) else int(raw)
            fields[item.name] = EfuseField(
                name=item.name,
                raw=raw_value,
                value=str(item.get()),
                readable=bool(item.is_readable()),
                writeable=bool(item.is_writeable()),
            )
            for alias in getattr(item, "alt_names", ()) or ():
                aliases.setdefault(alias, item.name)
        purposes: dict[str, str] = {}
        for block in efuses.blocks:
            for alias in block.alias:
                aliases.setdefault(alias, block.name)
            if getattr(block, "key_purpose_name", None):
                purposes[block.name] = block.key_purpose_name
        return EfuseState(
            chip=self.chip,
            revision=int(self._esp.get_chip_revision()),
            fields=fields,
            aliases=aliases,
            key_purpose_fields=purposes,
        )

    def burn(self, steps: Sequence[EfuseStep], material: Mapping[str, bytes]) -> None:
        """Burn ``steps`` in one espefuse batch, in order.

        ``material`` maps a step's ``source`` to its bytes. Raises :class:`FlashError`
        if espefuse refuses or the chip does not confirm the burn.
        """
        if not steps:
            return
        with silenced_esptool(self.quiet):
            self._burn(steps, material)

    def _burn(self, steps: Sequence[EfuseStep], material: Mapping[str, bytes]) -> None:
        import esptool

        commands = self._commands()
        commands.use_batch_mode()
        try:
            for step in steps:
                self._queue(commands, step, material)
            if not commands.burn_all(check_batch_mode=True):
                raise FlashError("espefuse did not burn the batch: nothing was confirmed")
        except (esptool.FatalError, OSError) as error:
            raise FlashError(
                f"espefuse refused or failed a burn ({'; '.join(s.describe() for s in steps)})"
                f": {error}"
            ) from error

    def _queue(self, commands: Any, step: EfuseStep, material: Mapping[str, bytes]) -> None:
        from espefuse.efuse import base_fields

        efuses = commands.efuses
        if step.is_key_burn:
            assert step.source is not None and step.purpose is not None
            data = material.get(step.source)
            if data is None:
                raise FlashError(
                    f"no {step.source} to burn into {step.target}: the bundle or vault lacks "
                    "it; rebuild the bundle with `espfleet provision`"
                )
            block = efuses.blocks[efuses.get_index_block_by_name(step.target)]
            if block.key_purpose_name is None:
                # ESP32: addressing the block by its purpose alias makes espefuse reverse
                # the key bytes (flash_encryption) as the AES hardware expects.
                name = step.purpose if step.purpose in block.alias else step.target
                commands.burn_key([name], [io.BytesIO(data)])
            elif step.action == "burn_key_digest":
                commands.burn_key([step.target], [None], [step.purpose], digest=[data])
            else:
                commands.burn_key([step.target], [io.BytesIO(data)], [step.purpose])
        elif step.action == "burn_efuse":
            value = base_fields.CheckArgValue(efuses, step.target)(str(step.value))
            commands.burn_efuse({step.target: value})
        elif step.action == "write_protect_efuse":
            commands.write_protect_efuse([step.target])
        else:
            commands.read_protect_efuse([step.target])
