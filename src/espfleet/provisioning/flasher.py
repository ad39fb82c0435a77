"""``espfleet flash``: put one device's bundle onto its chip, safely and resumably.

Three steps, each its own function so the CLI can show the plan and ask between them:

1. :func:`inspect_chip` (read-only): check the chip is the bundle's (chip, revision,
   MAC), read its eFuses, decide which plan steps it already holds and which images
   are already on flash (by the chip's MD5), and refuse any conflict.
2. :func:`execute`: burn the pending ``pre_flash`` eFuses (one espefuse batch), write
   the pending pre-encrypted images, verify every image by the chip's MD5, then burn
   the ``post_flash`` locks with the download-mode lock in a final batch of its own.
   The journal records each completed step; a failure raises a :class:`FlashError`
   that lists what completed and what is safe to do next.
3. The caller records the result (registry) and, under the destroy key policy, wipes
   the device's flash-encryption key.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from espfleet.chips import chip_facts
from espfleet.device_id import parse_mac
from espfleet.errors import EspfleetError, FlashError
from espfleet.provisioning.bundle import Bundle
from espfleet.provisioning.efuse_plan import (
    SOURCE_FLASH_ENCRYPTION_KEY,
    EfusePlan,
    EfuseStep,
    plan_for,
)
from espfleet.provisioning.esptool_driver import ChipIdentity, ChipSession
from espfleet.provisioning.flash_journal import FlashJournal
from espfleet.provisioning.preflight import (
    StepCheck,
    assess_steps,
    check_identity,
    pending,
)

__all__ = [
    "FlashImage",
    "FlashJob",
    "FlashResult",
    "ImageCheck",
    "Inspection",
    "execute",
    "inspect_chip",
]

KeyProvider = Callable[[], bytes]
Progress = Callable[[str], None]


@dataclass(frozen=True)
class FlashImage:
    """One image, written to flash exactly as stored (already encrypted if flagged)."""

    name: str
    offset: int
    data: bytes = field(repr=False)
    encrypted: bool = False

    def __post_init__(self) -> None:
        if self.offset < 0 or not self.data:
            raise FlashError(f"image {self.name} has no data or a negative offset")

    @property
    def md5(self) -> str:
        return hashlib.md5(self.data).hexdigest()

    @property
    def label(self) -> str:
        return f"{self.name}@{self.offset:#x}"


@dataclass(frozen=True)
class FlashJob:
    """What to put on one chip: plan, images and the public-key digest. No secret."""

    device_id: str
    chip: str
    mac: bytes
    plan: EfusePlan
    images: tuple[FlashImage, ...]
    secure_boot_digest: bytes = field(repr=False)
    #: SHA-256 (hex) of the flash-encryption key the images were encrypted with: the
    #: key handed over for the burn must match it, or the device would never boot.
    fe_key_sha256: str | None = None
    #: Flash size the bundle was built for ("4MB"); the chip's must be at least that.
    flash_size: str | None = None

    def __post_init__(self) -> None:
        if self.plan.chip != self.chip:
            raise FlashError(f"{self.device_id}: the eFuse plan is for {self.plan.chip}")
        if len(self.secure_boot_digest) != 32:
            raise FlashError(
                f"{self.device_id}: the secure boot digest has {len(self.secure_boot_digest)} "
                "bytes, not 32: rebuild the bundle with `espfleet provision`"
            )
        if not self.images:
            raise FlashError(f"{self.device_id}: the bundle has no images to flash")

    @classmethod
    def from_bundle(cls, bundle: Bundle) -> FlashJob:
        """The job of a loaded bundle; refuses a manifest whose eFuse plan is not the one
        espfleet derives for its chip and mode (an edited plan could drop the locks)."""
        manifest = bundle.manifest
        _check_canonical_plan(manifest.device_id, manifest.efuse_plan)
        try:
            digest = bytes.fromhex(manifest.key_fingerprints.secure_boot_digest)
        except ValueError:
            digest = b""
        return cls(
            device_id=manifest.device_id,
            chip=manifest.chip,
            mac=parse_mac(manifest.mac),
            plan=manifest.efuse_plan,
            images=tuple(
                FlashImage(a.name, a.offset, bundle.images[a.name], a.encrypted)
                for a in sorted(manifest.artifacts, key=lambda a: a.offset)
            ),
            secure_boot_digest=digest,
            fe_key_sha256=manifest.key_fingerprints.flash_encryption_key_sha256,
            flash_size=manifest.flash_size,
        )


def _check_canonical_plan(device_id: str, plan: EfusePlan) -> None:
    facts = chip_facts(plan.chip)
    xts_256 = facts.fe_key_purpose.get(64)
    fe_key_len = 64 if any(s.purpose == xts_256 for s in plan.steps if xts_256) else 32
    expected = plan_for(plan.chip, plan.mode, fe_key_len=fe_key_len)

    def shape(steps: Sequence[EfuseStep]) -> list[tuple[object, ...]]:
        return [(s.phase, s.action, s.target, s.value, s.purpose, s.source) for s in steps]

    if shape(plan.steps) != shape(expected.steps):
        raise FlashError(
            f"the eFuse plan in {device_id}'s manifest is not the {plan.mode} plan espfleet "
            f"derives for {plan.chip} (steps changed, dropped or reordered): the bundle was "
            "modified; do not flash it. Restore it from backup or rebuild it with "
            "`espfleet provision`; nothing was changed"
        )


@dataclass(frozen=True)
class ImageCheck:
    image: FlashImage
    done: bool


@dataclass(frozen=True)
class Inspection:
    """The read-only result of :func:`inspect_chip`: what the run will do."""

    job: FlashJob
    port: str
    identity: ChipIdentity
    efuse: tuple[StepCheck, ...]
    images: tuple[ImageCheck, ...]
    resuming: bool

    @property
    def complete(self) -> bool:
        return all(c.done for c in self.efuse) and all(i.done for i in self.images)

    def to_json(self) -> dict[str, Any]:
        def step_json(check: StepCheck) -> dict[str, Any]:
            return {
                "phase": check.step.phase,
                "step": check.step.describe(),
                "why": check.step.why,
                "done": check.done,
            }

        return {
            "device_id": self.job.device_id,
            "port": self.port,
            "chip": self.identity.chip,
            "revision": self.identity.revision_text,
            "mac": self.identity.mac_text,
            "flash_size": self.identity.flash_size,
            "mode": self.job.plan.mode,
            "resuming": self.resuming,
            "pre_flash": [step_json(c) for c in self.efuse if c.step.phase == "pre_flash"],
            "images": [
                {
                    "name": i.image.name,
                    "offset": i.image.offset,
                    "size": len(i.image.data),
                    "encrypted": i.image.encrypted,
                    "done": i.done,
                }
                for i in self.images
            ],
            "post_flash": [step_json(c) for c in self.efuse if c.step.phase == "post_flash"],
            "leaves_open": list(self.job.plan.leaves_open()),
        }


@dataclass(frozen=True)
class FlashResult:
    device_id: str
    port: str
    efuses_burned: tuple[str, ...]
    images_written: tuple[str, ...]
    images_verified: tuple[str, ...]
    locks_burned: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "port": self.port,
            "status": "flashed",
            "efuses_burned": list(self.efuses_burned),
            "images_written": list(self.images_written),
            "images_verified": list(self.images_verified),
            "locks_burned": list(self.locks_burned),
        }


def inspect_chip(job: FlashJob, session: ChipSession, journal: FlashJournal) -> Inspection:
    """Read-only pre-flight: refuse a wrong or conflicting chip, else say what to do."""
    identity = session.identity
    check_identity(
        device_id=job.device_id, chip=job.chip, mac=job.mac, identity=identity,
        port=session.port, flash_size=job.flash_size,
    )
    state = session.efuses.read_state()
    resuming = journal.started_burning(identity.mac_text)
    checks = assess_steps(job.plan, state, digest=job.secure_boot_digest, resuming=resuming)
    images = tuple(
        ImageCheck(image, session.flash.md5(image.offset, len(image.data)) == image.md5)
        for image in job.images
    )
    return Inspection(job, session.port, identity, checks, images, resuming)


@dataclass
class _Progress:
    efuses: list[str] = field(default_factory=list)
    written: list[str] = field(default_factory=list)
    verified: list[str] = field(default_factory=list)
    locks: list[str] = field(default_factory=list)
    stage: str = "preparation"


def execute(
    inspection: Inspection,
    session: ChipSession,
    journal: FlashJournal,
    *,
    key_provider: KeyProvider,
    progress: Progress | None = None,
) -> FlashResult:
    """Carry out what :func:`inspect_chip` found pending. Irreversible."""
    say = progress or (lambda _message: None)
    job = inspection.job
    done = _Progress()
    journal.begin(port=session.port, mac=inspection.identity.mac_text)
    try:
        todo = pending(inspection.efuse, "pre_flash")
        if todo:
            material = _material(todo, job, key_provider)
            done.stage = "pre_flash"
            say(f"burning {len(todo)} pre-flash eFuse step(s)")
            journal.mark_burn_started(inspection.identity.mac_text)
            session.efuses.burn(todo, material)
            _confirm(job, session, todo)
            for step in todo:
                done.efuses.append(step.describe())
                journal.mark(f"efuse:{step.describe()}")
        done.stage = "images"
        for check in inspection.images:
            image = check.image
            if not check.done:
                say(f"writing {image.label} ({len(image.data)} bytes)")
                session.flash.write(image.offset, image.data)
                done.written.append(image.label)
                journal.mark(f"written:{image.label}")
            _verify(session, image)
            say(f"verified {image.label} (the chip's MD5 matches the bundle)")
            done.verified.append(image.label)
            journal.mark(f"verified:{image.label}")
        done.stage = "post_flash"
        todo = pending(inspection.efuse, "post_flash")
        hardening, lock = _split_download_lock(job.plan.chip, todo)
        if hardening:
            say(f"burning {len(hardening)} hardening eFuse step(s)")
            session.efuses.burn(hardening, {})
            _confirm(job, session, hardening)
            _record_locks(hardening, done, journal)
        if lock:
            say("burning the download-mode lock (last)")
            session.efuses.burn(lock, {})
            _confirm(job, session, lock, may_be_silent=True)
            _record_locks(lock, done, journal)
    except (EspfleetError, KeyboardInterrupt) as error:
        cause = "interrupted (Ctrl-C)" if isinstance(error, KeyboardInterrupt) else error
        message = _failure_report(job.device_id, session.port, done, cause)
        journal.finish("failed", message)
        if done.stage == "preparation" and isinstance(error, EspfleetError):
            raise  # nothing happened yet: keep the cause's own type (a bad passphrase: exit 2)
        raise FlashError(message) from error
    journal.finish("flashed")
    return FlashResult(
        job.device_id,
        session.port,
        tuple(done.efuses),
        tuple(done.written),
        tuple(done.verified),
        tuple(done.locks),
    )


def _material(
    steps: Sequence[EfuseStep], job: FlashJob, key_provider: KeyProvider
) -> dict[str, bytes]:
    material = {"secure_boot_digest": job.secure_boot_digest}
    if any(s.source == SOURCE_FLASH_ENCRYPTION_KEY for s in steps):
        key = key_provider()
        if job.fe_key_sha256 is not None and hashlib.sha256(key).hexdigest() != job.fe_key_sha256:
            raise FlashError(
                f"the flash-encryption key found for {job.device_id} is not the one its "
                "images were encrypted with (SHA-256 differs from the manifest): burning it "
                "would brick the device. Check the vault/bundle belong to this workspace; "
                "nothing was burned"
            )
        material[SOURCE_FLASH_ENCRYPTION_KEY] = key
    return material


def _confirm(
    job: FlashJob, session: ChipSession, burned: Sequence[EfuseStep], *, may_be_silent: bool = False
) -> None:
    """Re-read the chip: every burned step must now show as done.

    ``may_be_silent``: after the download-mode lock a chip may stop answering register
    reads (secure download mode); espefuse already checked what it could, so a failed
    read is accepted there.
    """
    try:
        state = session.efuses.read_state()
    except FlashError:
        if may_be_silent:
            return
        raise
    checks = assess_steps(
        EfusePlan(job.plan.chip, job.plan.mode, tuple(burned)),
        state,
        digest=job.secure_boot_digest,
        resuming=True,
    )
    missing = [c.step.describe() for c in checks if not c.done]
    if missing:
        raise FlashError(f"the chip does not show these burns after espefuse ran: {missing}")


def _verify(session: ChipSession, image: FlashImage) -> None:
    actual = session.flash.md5(image.offset, len(image.data))
    if actual != image.md5:
        raise FlashError(
            f"{image.label} reads back MD5 {actual}, expected {image.md5}: the write did not "
            "stick (power, cable, or a write-protected flash)"
        )


def _split_download_lock(
    chip: str, steps: Sequence[EfuseStep]
) -> tuple[tuple[EfuseStep, ...], tuple[EfuseStep, ...]]:
    """Everything from the first step that locks download mode goes into a final batch."""
    facts = chip_facts(chip)
    locking = set(facts.download_lock_fields) | set(facts.write_protect_after_download_lock)
    for index, step in enumerate(steps):
        if step.target in locking:
            return tuple(steps[:index]), tuple(steps[index:])
    return tuple(steps), ()


def _record_locks(steps: Sequence[EfuseStep], done: _Progress, journal: FlashJournal) -> None:
    for step in steps:
        done.locks.append(step.describe())
        journal.mark(f"efuse:{step.describe()}")


def _listed(items: Sequence[str]) -> str:
    return ", ".join(items) if items else "none"


def _failure_report(device_id: str, port: str, done: _Progress, error: object) -> str:
    rerun = f"espfleet flash {device_id} --port {port}"
    if done.stage == "pre_flash":
        # stopped inside the burn: the chip, not this run, knows what took
        burned = "eFuses burned: not known (stopped while burning; the re-run reads the chip)"
    else:
        burned = f"eFuses burned: {_listed(done.efuses)}"
    written = f"images written: {_listed(done.written)}; verified: {_listed(done.verified)}"
    if done.stage == "preparation":
        next_step = "nothing was burned or written; fix the cause and re-run"
    elif done.stage == "pre_flash":
        next_step = (
            "some pre-flash eFuses may be burned; nothing was written to flash. Do not reset "
            f"the board into its old firmware; re-run `{rerun}`: it reads the chip, skips "
            "what is burned and never burns twice"
        )
    elif done.stage == "images":
        next_step = (
            f"nothing locked yet: the chip stays in download mode. Re-run `{rerun}` to "
            "resume (images already on flash are verified, not rewritten)"
        )
    else:
        next_step = (
            f"images verified; locks burned: {_listed(done.locks)}. Re-run `{rerun}` to "
            "finish the locks (if download mode is already locked, the device is done)"
        )
    return (
        f"flashing {device_id} stopped during {done.stage}: {error}. {burned}; {written}; "
        f"{next_step}"
    )
