"""The eFuse posture audit: does the chip really lock what the mode promises?

Pure over an eFuse snapshot (:class:`~espfleet.provisioning.espefuse_driver.EfuseState`,
what espefuse reads from a port or a ``--virt`` file), the chip table and the mode's
eFuse plan (:func:`~espfleet.provisioning.efuse_plan.plan_for`). Every finding names
the eFuse, the value found, the value required and the espefuse command that fixes
it, or says why no command can (the field is write-protected, or download mode is
locked so espefuse cannot reach the chip).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from espfleet.audit.findings import EfuseFinding, Severity, failing, worst
from espfleet.chips import ChipFacts, chip_facts
from espfleet.provisioning.efuse_plan import EfusePlan, Mode, plan_for
from espfleet.provisioning.espefuse_driver import EfuseState

__all__ = ["EfuseReport", "audit_efuses"]

#: How bad each missing release-hardening burn is (espefuse names, all chips).
_HARDENING_SEVERITY = {
    "DISABLE_DL_DECRYPT": Severity.CRITICAL,  # the ROM would hand out decrypted flash
    "CONSOLE_DEBUG_DISABLE": Severity.MEDIUM,
    "DIS_DIRECT_BOOT": Severity.MEDIUM,
}
_HARDENING_WHY = {
    "DISABLE_DL_ENCRYPT": "download mode can still use the flash-encryption hardware",
    "DISABLE_DL_DECRYPT": "download mode can still read flash decrypted: a read-out "
    "gives plaintext",
    "DISABLE_DL_CACHE": "download mode can still use the flash cache (MMU) to read flash",
    "JTAG_DISABLE": "JTAG is open: a debugger can read RAM, keys in use and NVS contents",
    "CONSOLE_DEBUG_DISABLE": "the ROM BASIC console is available",
    "DIS_DOWNLOAD_ICACHE": "download mode can still read flash through the instruction cache",
    "DIS_DOWNLOAD_DCACHE": "download mode can still read flash through the data cache",
    "DIS_PAD_JTAG": "JTAG on the pads is open: a debugger can read RAM and keys in use",
    "DIS_USB_JTAG": "the USB-JTAG bridge is open: a debugger can read RAM and keys in use",
    "DIS_DIRECT_BOOT": "legacy direct boot is allowed, which skips the bootloader checks",
    "DIS_DOWNLOAD_MANUAL_ENCRYPT": "download mode can still use the flash-encryption "
    "hardware",
}
_FREE_PURPOSES = ("USER", "0", "None", "")


@dataclass(frozen=True)
class EfuseReport:
    chip: str
    mode: Mode
    findings: tuple[EfuseFinding, ...]
    #: What the mode deliberately leaves open (development), and other context.
    notes: tuple[str, ...] = ()

    def failing(self, threshold: Severity) -> list[EfuseFinding]:
        return [f for f in failing(self.findings, threshold) if isinstance(f, EfuseFinding)]

    @property
    def worst(self) -> Severity | None:
        return worst(self.findings)

    def to_json(self) -> dict[str, Any]:
        top = self.worst
        return {
            "chip": self.chip,
            "mode": self.mode,
            "worst": top.label if top is not None else None,
            "findings": [f.to_json() for f in self.findings],
            "notes": list(self.notes),
        }


@dataclass(frozen=True)
class _Context:
    state: EfuseState
    facts: ChipFacts
    plan: EfusePlan
    digest: bytes | None

    @property
    def release(self) -> bool:
        return self.plan.mode == "release"

    def value(self, name: str) -> int:
        return self.state.get(name).as_int

    @property
    def lock_field(self) -> str:
        """The download-mode lock the release plan burns last."""
        hardening = self.facts.release_hardening
        return next(f for f in reversed(hardening) if f in self.facts.download_lock_fields)

    def lock(self) -> str | None:
        """Why espefuse cannot reach this chip any more, or None."""
        for name in self.facts.download_lock_fields:
            if self.value(name):
                return (
                    f"download mode is locked ({name}=1), so espefuse can no longer burn this "
                    "chip's eFuses"
                )
        return None

    def command(self, args: list[str], field: str | None) -> tuple[str | None, str]:
        """The espefuse command line, or None with the reason no command can work."""
        if field is not None and not self.state.get(field).writeable:
            return None, f"{field} is write-protected, so no espefuse command can change it"
        locked = self.lock()
        if locked:
            return None, locked
        return f"espefuse --chip {self.facts.name} --port PORT {' '.join(args)}", ""

    def finding(
        self,
        severity: Severity,
        kind: str,
        efuse: str,
        found: str,
        required: str,
        message: str,
        args: list[str],
        field: str | None,
        unfixable: str,
        caution: str = "",
    ) -> EfuseFinding:
        command, reason = self.command(args, field)
        if command:
            fix = f"{caution}: run: {command}" if caution else f"run: {command}"
        else:
            fix = f"none possible: {reason}; {unfixable}"
        return EfuseFinding(severity, kind, efuse, found, required, message, fix, command)


def audit_efuses(
    state: EfuseState,
    mode: str = "release",
    *,
    expected_digest: bytes | None = None,
    unverified: Sequence[str] = (),
) -> EfuseReport:
    """Check ``state`` against its chip's table and the eFuse plan of ``mode``.

    ``expected_digest`` is the fleet's Secure Boot V2 public-key digest (from the
    workspace's signing key); without it only the presence of a digest is checked.
    ``unverified`` names what the snapshot's source could not show (filled in with
    the required values): the report lists it so nobody mistakes it for checked.
    """
    facts = chip_facts(state.chip)
    plan = plan_for(state.chip, mode)
    ctx = _Context(state, facts, plan, expected_digest)
    findings = [f for check in _CHECKS for f in check(ctx)]
    # Listed in an order that is safe to fix top to bottom: the download-mode lock
    # (and what it must come with) last, since espefuse cannot reach the chip after it.
    findings.sort(key=lambda f: (_runs_last(facts, f), -f.severity))
    notes = _left_open(ctx)
    if unverified:
        notes += (f"not verified, assumed as required: {', '.join(unverified)}",)
    elif expected_digest is None and _digest_slots(ctx):
        notes += ("the secure boot digest was not compared with the fleet's signing key "
                  "(no --workspace): a chip that trusts any other key passes this audit",)
    return EfuseReport(chip=facts.name, mode=plan.mode, findings=tuple(findings), notes=notes)


def _left_open(ctx: _Context) -> tuple[str, ...]:
    """What a development-mode chip still leaves open, as its eFuses show it (not as the
    plan intends: a chip audited as development may be locked further than that)."""
    if ctx.release:
        return ()
    facts, notes = ctx.facts, []
    counter = facts.crypt_cnt_field
    left = (facts.crypt_cnt_bits - bin(ctx.value(counter)).count("1")) // 2
    if ctx.state.get(counter).writeable and left:
        notes.append(f"{counter} stays writable: flash encryption can be turned off ({left} "
                     "plaintext re-flash(es) left in the chip's life)")
    if ctx.lock() is None:
        open_dl = [name for name in facts.release_hardening if name in _HARDENING_WHY
                   and _HARDENING_WHY[name].startswith("download mode") and not ctx.value(name)]
        notes.append("UART download mode stays open" + (
            f" ({', '.join(open_dl)} not burned): anyone with the board can read decrypted "
            "flash and write plaintext images" if open_dl else
            ": anyone with the board can talk to the ROM loader"))
    jtag = [name for name in facts.release_hardening if "JTAG" in name and not ctx.value(name)]
    if jtag:
        notes.append(f"JTAG stays enabled ({', '.join(jtag)} not burned): a debugger can read "
                     "RAM (keys in use, NVS contents)")
    if ctx.state.get(facts.rd_dis_field).writeable:
        notes.append(f"{facts.rd_dis_field} is not write-protected")
    if any(not blocks and not ctx.value(revoke) for _, revoke, blocks in _slot_blocks(ctx)):
        notes.append("unused secure boot digest slots are not revoked")
    return tuple(notes)


#: Burns that brick a chip whose flash does not hold matching images yet.
_FE_CAUTION = (
    "only once the key is burned and the flash holds images encrypted with it, or the "
    "chip no longer boots (on an unprovisioned chip `espfleet flash DEVICE_ID --port PORT` "
    "burns in the safe order)"
)
_SB_CAUTION = (
    "only once the digest is burned and the flash holds a bootloader and app signed with "
    "that key, or the chip no longer boots (on an unprovisioned chip `espfleet flash "
    "DEVICE_ID --port PORT` burns in the safe order)"
)
_LAST_CAUTION = (
    "burn this last, after every other fix: once download mode is locked espefuse cannot "
    "reach the chip"
)
_RETIRE = "treat this chip as unfit for release: keep it on the bench or scrap it"


def _runs_last(facts: ChipFacts, finding: EfuseFinding) -> bool:
    return finding.kind == "download-mode-open" or (
        finding.kind == "not-write-protected"
        and finding.efuse in facts.write_protect_after_download_lock
    )


def _lock_args(ctx: _Context, lock: str) -> list[str]:
    """The download-lock burn, chained with the write protections that must follow it
    (ESP32: write-protecting FLASH_CRYPT_CNT also locks UART_DOWNLOAD_DIS at 0)."""
    args = ["burn-efuse", lock, "1"]
    for name in ctx.facts.write_protect_after_download_lock:
        if ctx.state.get(name).writeable:
            args += ["write-protect-efuse", name]
    return args


def _key_blocks(ctx: _Context, prefix: str) -> list[str]:
    """Key blocks whose purpose starts with ``prefix`` (S3/C3)."""
    return [
        block
        for block in ctx.facts.sb_digest_blocks
        if (ctx.state.purpose_of(block) or "").startswith(prefix)
    ]


def _check_fe_key(ctx: _Context) -> Iterator[EfuseFinding]:
    facts = ctx.facts
    purposes = sorted(set(facts.fe_key_purpose.values()))
    step = next(s for s in ctx.plan.steps if s.action == "burn_key")
    if facts.sb_digest_purposes is None:  # one fixed key block, no purpose field
        block = facts.fe_key_blocks[0]
        field = ctx.state.get(block)
        blocks = [block] if (not field.readable or not field.is_blank) else []
    else:
        blocks = [b for p in purposes for b in _key_blocks(ctx, p)]
    if not blocks:
        yield ctx.finding(
            Severity.CRITICAL, "fe-key-missing", step.target, "no key",
            f"a flash-encryption key ({' or '.join(purposes)})",
            "no flash-encryption key is burned: flash contents cannot be encrypted",
            step.espefuse_args("flash_encryption_key.bin"), step.target, _RETIRE,
        )
        return
    for block in blocks:
        field = ctx.state.get(block)
        if field.readable:
            yield ctx.finding(
                Severity.CRITICAL, "fe-key-readable", block, "readable", "read-protected",
                f"the flash-encryption key in {block} can be read back by software and by "
                "espefuse: whoever reads it decrypts every dump of this chip",
                ["read-protect-efuse", block], facts.rd_dis_field,
                "the key must be considered known: " + _RETIRE,
            )
        if field.writeable:
            yield ctx.finding(
                Severity.MEDIUM, "fe-key-writable", block, "writable", "write-protected",
                f"the key block {block} is not write-protected: more key bits can be burned",
                ["write-protect-efuse", block], None, _RETIRE,
            )


def _check_crypt_counter(ctx: _Context) -> Iterator[EfuseFinding]:
    facts = ctx.facts
    name = facts.crypt_cnt_field
    have = ctx.value(name)
    want = facts.crypt_cnt_release if ctx.release else facts.crypt_cnt_development
    all_bits = (1 << facts.crypt_cnt_bits) - 1
    if bin(have).count("1") % 2 == 0:
        target = facts.crypt_cnt_release if ctx.release else (have | (have + 1)) & all_bits
        yield ctx.finding(
            Severity.CRITICAL, "flash-encryption-off", name, f"{have:#x} (even: off)",
            f"an odd number of bits ({want:#x})",
            "flash encryption is off: every `esptool read-flash` returns plaintext",
            ["burn-efuse", name, hex(target)], name,
            "flash encryption can never be turned on again on this chip: " + _RETIRE,
            _FE_CAUTION,
        )
        return
    if ctx.release and have != facts.crypt_cnt_release:
        yield ctx.finding(
            Severity.HIGH, "crypt-counter-not-final", name, f"{have:#x}",
            f"{facts.crypt_cnt_release:#x} (all bits)",
            "flash encryption is on but not final: burning one more bit turns it off, "
            "after which plaintext images can be flashed",
            ["burn-efuse", name, hex(facts.crypt_cnt_release)], name, _RETIRE,
        )


def _check_crypt_config(ctx: _Context) -> Iterator[EfuseFinding]:
    name, want = ctx.facts.crypt_config_field, ctx.facts.crypt_config_value
    if name is None or want is None or ctx.value(name) == want:
        return
    have = ctx.value(name)
    yield ctx.finding(
        Severity.HIGH, "crypt-config", name, f"{have:#x}", f"{want:#x}",
        "FLASH_CRYPT_CONFIG does not tweak the key with every address bit: blocks at "
        "different offsets share keys, and host-encrypted images will not decrypt",
        ["burn-efuse", name, hex(want)], name, _RETIRE,
    )


def _digest_slots(ctx: _Context) -> dict[str, bytes | None]:
    """Digest block -> its digest (None when read-protected)."""
    facts = ctx.facts
    if facts.sb_digest_purposes is None:
        blocks = [facts.sb_digest_blocks[0]]
        blocks = [b for b in blocks if not ctx.state.get(b).is_blank]
    else:
        blocks = [b for p in facts.sb_digest_purposes for b in _key_blocks(ctx, p)]
    return {block: _digest_in(ctx, block) for block in blocks}


def _digest_in(ctx: _Context, block: str) -> bytes | None:
    """The digest burned in ``block``, None when it is read-protected."""
    field = ctx.state.get(block)
    return field.raw if field.readable and isinstance(field.raw, bytes) else None


def _check_secure_boot(ctx: _Context) -> Iterator[EfuseFinding]:
    facts = ctx.facts
    step = next(s for s in ctx.plan.steps if s.action == "burn_key_digest")
    slots = _digest_slots(ctx)
    if not slots:
        yield ctx.finding(
            Severity.CRITICAL if ctx.release else Severity.HIGH, "sb-digest-missing",
            step.target, "no digest", "the fleet signing key's public-key digest",
            "no Secure Boot V2 public-key digest is burned: the chip cannot verify images",
            step.espefuse_args("secure_boot_digest.bin"), step.target, _RETIRE,
        )
    elif ctx.digest is not None and ctx.digest not in _trusted_digests(ctx, slots):
        found = ", ".join(f"{b}={d.hex() if d else 'unreadable'}" for b, d in slots.items())
        yield EfuseFinding(
            Severity.CRITICAL, "sb-digest-foreign", ", ".join(slots), found,
            ctx.digest.hex(),
            "secure boot trusts a key that is not this fleet's signing key",
            "none possible: burned digests cannot be changed; this chip only boots images "
            f"signed by another key: {_RETIRE}",
        )
    elif ctx.digest is not None:
        yield from _check_extra_digests(ctx)
    if not ctx.value(facts.sb_enable_field):
        yield ctx.finding(
            Severity.CRITICAL if ctx.release else Severity.HIGH, "secure-boot-off",
            facts.sb_enable_field, "0", "1",
            "Secure Boot V2 is off: the chip boots any bootloader and app written to it",
            ["burn-efuse", facts.sb_enable_field, "1"], facts.sb_enable_field, _RETIRE,
            _SB_CAUTION,
        )


def _slot_blocks(ctx: _Context) -> Iterator[tuple[str, str, list[str]]]:
    """Per digest slot (S3/C3): its purpose, its revoke field and the blocks holding it."""
    purposes = ctx.facts.sb_digest_purposes or ()
    for purpose, revoke in zip(purposes, ctx.facts.sb_revoke_fields, strict=True):
        yield purpose, revoke, _key_blocks(ctx, purpose)


def _trusted_digests(ctx: _Context, slots: dict[str, bytes | None]) -> set[bytes | None]:
    """The digests secure boot accepts: a revoked slot's digest no longer counts."""
    revoked = {b for _, revoke, blocks in _slot_blocks(ctx) if ctx.value(revoke) for b in blocks}
    return {digest for block, digest in slots.items() if block not in revoked}


def _check_extra_digests(ctx: _Context) -> Iterator[EfuseFinding]:
    """A second, foreign digest in an unrevoked slot: the chip also boots its images."""
    expected = ctx.digest
    if expected is None:
        return
    for purpose, revoke, blocks in _slot_blocks(ctx):
        if ctx.value(revoke):
            continue
        for block in blocks:
            digest = _digest_in(ctx, block)
            if digest == expected:
                continue
            yield ctx.finding(
                Severity.CRITICAL, "sb-digest-extra", revoke,
                f"{block} ({purpose})={digest.hex() if digest else 'unreadable'}, not revoked",
                f"{revoke}=1 (only the fleet digest {expected.hex()[:16]}... trusted)",
                f"digest slot {purpose} holds a key that is not this fleet's signing key and "
                "is not revoked: secure boot also boots images signed by that key",
                ["burn-efuse", revoke, "1"], revoke, _RETIRE,
            )


def _check_revocations(ctx: _Context) -> Iterator[EfuseFinding]:
    if not ctx.release:
        return
    for purpose, revoke, blocks in _slot_blocks(ctx):
        if blocks or ctx.value(revoke):
            continue
        yield ctx.finding(
            Severity.HIGH, "sb-slot-not-revoked", revoke, "0", "1",
            f"digest slot {purpose} is empty and not revoked: anyone who can burn eFuses "
            "can add a second signing key that secure boot will trust",
            ["burn-efuse", revoke, "1"], revoke, _RETIRE,
        )


def _check_hardening(ctx: _Context) -> Iterator[EfuseFinding]:
    facts = ctx.facts
    if not ctx.release:
        return
    for name in facts.release_hardening:
        if name in facts.download_lock_fields or ctx.value(name):
            continue
        yield ctx.finding(
            _HARDENING_SEVERITY.get(name, Severity.HIGH), "hardening-missing", name, "0", "1",
            _HARDENING_WHY.get(name, f"{name} is not burned"),
            ["burn-efuse", name, "1"], name, _RETIRE,
        )
    if ctx.lock() is None:
        lock = ctx.lock_field
        found = ", ".join(f"{f}=0" for f in facts.download_lock_fields)
        yield ctx.finding(
            Severity.HIGH, "download-mode-open", lock, found, f"{lock}=1",
            "UART download mode is open: with a cable anyone can talk to the ROM loader "
            "(read flash, read eFuses, try glitching)",
            _lock_args(ctx, lock), lock, _RETIRE, _LAST_CAUTION,
        )


def _check_write_protection(ctx: _Context) -> Iterator[EfuseFinding]:
    if not ctx.release:
        return
    why = {
        ctx.facts.rd_dis_field: "RD_DIS is not write-protected: anyone who can burn eFuses "
        "can read-protect the secure boot digest and brick the chip",
        ctx.facts.crypt_cnt_field: "the crypt counter is not write-protected: burning "
        "another bit turns flash encryption off",
    }
    lock = ctx.lock_field
    for name in ctx.facts.release_write_protect:
        if not ctx.state.get(name).writeable:
            continue
        args, caution = ["write-protect-efuse", name], ""
        if name in ctx.facts.write_protect_after_download_lock and ctx.state.get(lock).writeable:
            args = _lock_args(ctx, lock)
            caution = (f"together with {lock}, last (write-protecting {name} also locks "
                       f"{lock}); {_LAST_CAUTION}")
        yield ctx.finding(
            Severity.HIGH, "not-write-protected", name, "writable", "write-protected",
            why.get(name, f"{name} is not write-protected"), args, None, _RETIRE, caution,
        )


def _revision_text(revision: int) -> str:
    return f"v{revision // 100}.{revision % 100}"


def _check_revision(ctx: _Context) -> Iterator[EfuseFinding]:
    """Secure Boot V2 needs a minimum silicon revision (ESP32: v3.0): below it no burn
    can reach the posture, and burning the secure boot eFuses would follow bad advice."""
    have, need = ctx.state.revision, ctx.facts.sb_v2_min_revision
    if have >= need:
        return
    yield EfuseFinding(
        Severity.CRITICAL, "revision-too-old", "chip revision", _revision_text(have),
        f"{_revision_text(need)} or newer",
        f"this {ctx.facts.name} is revision {_revision_text(have)}: Secure Boot V2 needs "
        f"{_revision_text(need)}, so this chip can never reach the {ctx.plan.mode} posture",
        f"none possible: the revision is the silicon's; do not burn secure boot eFuses on "
        f"it; use a {ctx.facts.name} of revision {_revision_text(need)} or newer",
    )


_CHECKS: tuple[Callable[[_Context], Iterator[EfuseFinding]], ...] = (
    _check_revision,
    _check_fe_key,
    _check_crypt_counter,
    _check_crypt_config,
    _check_secure_boot,
    _check_revocations,
    _check_hardening,
    _check_write_protection,
)
