"""The batch runner: provision many devices in parallel processes, resumably.

Per device, in a worker process (the CA and vault keys are loaded once, in the parent,
and inherited by the forked workers):

1. fresh secrets from the OS CSPRNG, a P-256 key and certificate from the issuing CA;
2. :func:`~espfleet.provisioning.plan.plan_device` builds every image in memory;
3. the bundle is written into ``bundles/.<id>.partial-*`` and renamed into place
   (:func:`espfleet._io.atomic_directory`); under ``escrow`` the vault file is written
   just before the rename.

Back in the parent, one registry transaction per device records the device
(``provisioned``, recovery-secret hash, bundle hash) and its certificate, only after
the bundle is in place. A device is *done* when its bundle exists and the registry
row carries the same bundle hash (and the bundle has this run's mode, flash size and
app version: otherwise an unflashed device is rebuilt, see :func:`done_devices`); a
re-run skips done devices, removes leftovers of a
killed run (``.partial-*`` directories, a bundle without its registry row) and builds
the rest. So a crash, ``kill -9`` or Ctrl-C at any point leaves no half bundle or row.
The run decides and rebuilds each existing bundle under the lock `espfleet flash` holds
on it (``bundles/<id>/``), until its registry row is committed; a device being flashed
is refused (nothing written for it) unless it is done.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import multiprocessing
import os
import secrets
import shutil
import time
from collections.abc import Callable, Collection, Generator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from espfleet._io import atomic_directory
from espfleet.backend.registry import Registry
from espfleet.errors import EspfleetError, FlashError, InputError, ProvisioningError
from espfleet.formats.nvs_keys import NvsKeys
from espfleet.pki.ca import CertificateAuthority
from espfleet.provisioning.bundle import (
    MANIFEST_NAME,
    CertificateInfo,
    FirmwareInfo,
    Manifest,
    write_bundle,
)
from espfleet.provisioning.flash_journal import JOURNAL_NAME, FlashJournal
from espfleet.provisioning.identity import hash_recovery_secret, new_recovery_secret
from espfleet.provisioning.locks import directory_lock
from espfleet.provisioning.plan import DeviceKeys, DeviceRequest, FleetPolicy, plan_device
from espfleet.provisioning.vault import Vault

__all__ = [
    "BatchReport",
    "DeviceResult",
    "batch_lock",
    "bundle_sha256",
    "clean_leftovers",
    "done_devices",
    "run_batch",
]

#: Registry statuses of a device whose bundle was built (or that went further).
DONE_STATUSES = ("provisioned", "flashing", "flashed", "active")


@dataclass(frozen=True)
class DeviceResult:
    device_id: str
    status: Literal["built", "skipped", "failed"]
    seconds: float = 0.0
    error: str | None = None
    bundle_sha256: str | None = None
    mac: str | None = None
    recovery_secret_hash: str | None = None
    serial: str | None = None
    fingerprint_sha256: str | None = None
    not_before: dt.datetime | None = None
    not_after: dt.datetime | None = None
    #: Why a skipped device keeps a bundle unlike this run's (it is already flashed).
    note: str | None = None


@dataclass(frozen=True)
class BatchReport:
    results: tuple[DeviceResult, ...]
    seconds: float

    def count(self, status: str) -> int:
        return sum(1 for r in self.results if r.status == status)

    def to_json(self) -> dict[str, Any]:
        return {
            "built": self.count("built"),
            "skipped": self.count("skipped"),
            "failed": self.count("failed"),
            "seconds": round(self.seconds, 3),
            "devices": [
                {"device_id": r.device_id, "status": r.status, "error": r.error,
                 "bundle_sha256": r.bundle_sha256, "serial": r.serial, "note": r.note}
                for r in self.results
            ],
        }


@dataclass(frozen=True)
class _Job:
    """What a worker needs, inherited by the forked workers (keys loaded once)."""

    bundles_dir: Path
    vault: Vault
    policy: FleetPolicy
    ca: CertificateAuthority


_STATE: dict[str, Any] = {}


def _init_worker(job: _Job) -> None:
    from esptool.logger import log

    log.set_verbosity("silent")
    _STATE["job"] = job


def _build_one(request: DeviceRequest) -> DeviceResult:
    job: _Job = _STATE["job"]
    start = time.perf_counter()
    device_id = request.device_id
    try:
        return _build(job, request, start)
    except EspfleetError as error:
        return DeviceResult(device_id, "failed", time.perf_counter() - start, str(error))


def _build(job: _Job, request: DeviceRequest, start: float) -> DeviceResult:
    policy, vault = job.policy, job.vault
    device_id = request.device_id
    fe_key = secrets.token_bytes(policy.fe_key_len)
    issued = job.ca.issue_device_cert(device_id)
    assert issued.key_pem is not None
    recovery = new_recovery_secret()
    keys = DeviceKeys(
        flash_encryption_key=fe_key,
        nvs_keys=NvsKeys.generate(),
        recovery_secret=recovery,
        cert_pem=issued.cert_pem.decode(),
        key_pem=issued.key_pem.decode(),
        certificate=CertificateInfo(
            serial=issued.serial_hex,
            fingerprint_sha256=issued.fingerprint_sha256,
            not_after=issued.not_after.isoformat(),
        ),
    )
    plan = plan_device(policy, request, keys)
    sealed = vault.seal(device_id, plan.secrets)
    target = job.bundles_dir / device_id
    with atomic_directory(target) as tmp:
        write_bundle(
            tmp, plan.manifest, plan.images, merged=plan.merged,
            sealed_secrets=sealed if policy.key_policy == "destroy" else None,
        )
        if policy.key_policy == "escrow":
            vault.store(device_id, plan.secrets)
    return DeviceResult(
        device_id, "built", time.perf_counter() - start,
        bundle_sha256=hashlib.sha256(plan.manifest.encode()).hexdigest(),
        mac=request.mac.hex(),
        recovery_secret_hash=hash_recovery_secret(recovery),
        serial=issued.serial_hex,
        fingerprint_sha256=issued.fingerprint_sha256,
        not_before=issued.not_before,
        not_after=issued.not_after,
    )


def batch_lock(bundles_dir: Path) -> contextlib.AbstractContextManager[None]:
    """One batch per workspace at a time: hold it from MAC allocation to the last record.
    Two concurrent runs would allocate the same MACs and remove each other's
    ``.partial-*`` directories and vault files as leftovers."""
    bundles_dir.mkdir(parents=True, exist_ok=True)
    return directory_lock(bundles_dir, ProvisioningError(
        f"another `espfleet provision` is running in this workspace (it holds "
        f"{bundles_dir}): wait for it to finish, then run this command again; nothing "
        "was changed"
    ))


def bundle_sha256(bundle_dir: Path) -> str | None:
    """Hash of a bundle's manifest (which holds every artifact's hash), or None."""
    try:
        return hashlib.sha256((bundle_dir / MANIFEST_NAME).read_bytes()).hexdigest()
    except FileNotFoundError:
        return None


def done_devices(
    registry: Registry,
    bundles_dir: Path,
    device_ids: Sequence[str],
    *,
    policy: FleetPolicy | None = None,
) -> set[str]:
    """Devices not to build again: recorded ``provisioned`` with the same bundle hash and
    (given ``policy``) the same mode, flash size and app version, or already flashed (their keys
    are in a chip: a new bundle would not match it).

    A provisioned device whose bundle is damaged or was built with other settings is
    rebuilt, unless ``espfleet flash`` began burning it: a rebuild would replace the
    only copy of the flash-encryption key its chip may hold. That, and a flashed device
    that this run's mode would leave in the other mode, are refused (nothing changed).
    """
    done = set()
    for device_id in device_ids:
        record = registry.get_device(device_id)
        if record is None or record.status not in DONE_STATUSES:
            continue
        if record.status != "provisioned":
            if policy is not None and record.mode not in (None, policy.mode):
                raise InputError(
                    f"device {device_id} is already {record.status} in {record.mode} mode; "
                    f"this {policy.mode} run cannot change that (its keys are in the chip): "
                    f"leave it out of this batch, or provision it with --mode {record.mode}; "
                    "nothing was changed"
                )
            done.add(device_id)
            continue
        bundle_dir = bundles_dir / device_id
        intact = bool(record.bundle_sha256) and record.bundle_sha256 == bundle_sha256(bundle_dir)
        changed = _changed_settings(bundle_dir, policy) if intact else ["the bundle"]
        if not changed:
            done.add(device_id)
        elif _flash_started(bundle_dir, device_id):
            raise InputError(
                f"{device_id} would be rebuilt ({', '.join(changed)} changed), but "
                f"`espfleet flash` began burning its eFuses ({bundle_dir / JOURNAL_NAME}): its "
                "chip may already hold the flash-encryption key of its bundle, and a rebuild "
                "would replace that key. Finish it with `espfleet flash` (restore a damaged "
                "bundle from backup) or leave it out of this batch; nothing was changed"
            )
    return done


def _changed_settings(bundle_dir: Path, policy: FleetPolicy | None) -> list[str]:
    """What of ``policy`` the recorded bundle was not built with (mode, flash size, app
    name and versions, a merged image asked for)."""
    if policy is None:
        return []
    try:
        manifest = Manifest.decode((bundle_dir / MANIFEST_NAME).read_bytes())
    except (OSError, EspfleetError):
        return ["the bundle"]
    # The app by name and versions: its signature (RSA-PSS) differs on every signing.
    def app(info: FirmwareInfo) -> tuple[str, str, int]:
        return info.project_name, info.version, info.secure_version

    built = {"mode": manifest.mode, "flash size": manifest.flash_size,
             "app version": app(manifest.firmware)}
    wanted = {"mode": policy.mode, "flash size": policy.flash_size,
              "app version": app(policy.firmware)}
    changed = [name for name in built if built[name] != wanted[name]]
    # --merged asked for on a re-run: the bundle has no merged image to hand over
    if policy.merged and manifest.merged is None:
        changed.append("merged image")
    return changed


def _flash_started(bundle_dir: Path, device_id: str) -> bool:
    """Whether the bundle's flash journal records a started burn (or cannot be read)."""
    try:
        return FlashJournal.load(bundle_dir, device_id).burn_started
    except FlashError:
        return True


def clean_leftovers(
    bundles_dir: Path, pending: Sequence[str], vault: Vault, locked: Collection[str] = ()
) -> list[str]:
    """Remove ``.partial-*`` directories, and the bundles and vault files of pending
    (unrecorded) devices: what a killed or interrupted run left behind. A bundle is
    removed under its flash lock (already held by this process for the ids in
    ``locked``); one that `espfleet flash` holds is kept, with its vault file."""
    removed: list[str] = []
    if not bundles_dir.exists():
        return removed
    for item in bundles_dir.iterdir():
        if item.name.startswith(".") and ".partial-" in item.name and item.is_dir():
            shutil.rmtree(item, ignore_errors=True)
            removed.append(item.name)
    for device_id in pending:
        orphan = bundles_dir / device_id
        try:
            with contextlib.ExitStack() as stack:
                if device_id not in locked:
                    stack.enter_context(_device_lock(bundles_dir, device_id))
                shutil.rmtree(orphan)
                removed.append(device_id)
        except FileNotFoundError:
            pass
        except ProvisioningError:
            continue  # being flashed: its chip may take this vault key
        vault.destroy(device_id)
    return removed


def _device_lock(bundles_dir: Path, device_id: str) -> contextlib.AbstractContextManager[None]:
    """The lock `espfleet flash` holds on ``bundles/<id>/`` (see
    :meth:`FlashJournal.exclusive`): taken before a bundle is rebuilt or removed, so its
    chip never gets a key that the new bundle and vault no longer hold. Raises
    :class:`FileNotFoundError` if there is no bundle."""
    bundle_dir = bundles_dir / device_id
    return directory_lock(bundle_dir, ProvisioningError(
        f"{device_id} is being flashed by another espfleet process (it holds {bundle_dir}): "
        "run provision again after it finishes; nothing was written for this device"
    ))


def _lock_bundles(
    stack: contextlib.ExitStack, bundles_dir: Path, device_ids: Sequence[str]
) -> tuple[dict[str, contextlib.ExitStack], dict[str, str]]:
    """Take the flash lock of every existing bundle of ``device_ids`` (held until
    ``stack`` closes, or its own stack does). Returns the held locks and, for the
    bundles another process holds, why."""
    held: dict[str, contextlib.ExitStack] = {}
    busy: dict[str, str] = {}
    for device_id in device_ids:
        own = stack.enter_context(contextlib.ExitStack())
        try:
            own.enter_context(_device_lock(bundles_dir, device_id))
        except (FileNotFoundError, NotADirectoryError):
            continue
        except ProvisioningError as error:
            busy[device_id] = str(error)
            continue
        held[device_id] = own
    return held, busy


def _record(registry: Registry, policy: FleetPolicy, result: DeviceResult) -> None:
    """One transaction: the device row (created or updated) and its certificate."""
    assert result.mac and result.recovery_secret_hash and result.bundle_sha256
    assert result.serial and result.fingerprint_sha256
    assert result.not_before is not None and result.not_after is not None
    registry.record_provisioned(
        result.device_id, chip=policy.chip, mac=result.mac, mode=policy.mode,
        recovery_secret_hash=result.recovery_secret_hash, bundle_sha256=result.bundle_sha256,
        serial=result.serial, not_before=result.not_before, not_after=result.not_after,
        fingerprint_sha256=result.fingerprint_sha256,
    )


def run_batch(
    *,
    requests: Sequence[DeviceRequest],
    policy: FleetPolicy,
    ca: CertificateAuthority,
    registry: Registry,
    bundles_dir: Path,
    vault_dir: Path,
    passphrase: bytes,
    jobs: int | None = None,
    on_result: Callable[[DeviceResult], None] | None = None,
) -> BatchReport:
    """Provision ``requests``; done devices are skipped. See the module docstring."""
    start = time.perf_counter()
    ids = [r.device_id for r in requests]
    if len(set(ids)) != len(ids):
        raise ProvisioningError("the batch names a device twice")
    # Derived once here; forked workers inherit the key (and kdf.json exists before them).
    vault = Vault.open(vault_dir, passphrase)
    with contextlib.ExitStack() as stack:
        # Decide and rebuild under the flash lock of each bundle: a `espfleet flash` of
        # the device running meanwhile would burn the key of the bundle replaced.
        held, busy = _lock_bundles(stack, bundles_dir, ids)
        done = done_devices(registry, bundles_dir, ids, policy=policy)
        for device_id in done & held.keys():
            held.pop(device_id).close()  # kept as is: flash it meanwhile
        refused = {device_id: why for device_id, why in busy.items() if device_id not in done}
        pending = [r for r in requests if r.device_id not in done | refused.keys()]
        clean_leftovers(bundles_dir, [r.device_id for r in pending], vault, held.keys())
        results = _not_built(ids, done, refused, bundles_dir, policy)
        if on_result:
            for result in results:
                on_result(result)
        job = _Job(bundles_dir, vault, policy, ca)
        recorded: set[str] = set()
        try:
            workers = jobs or os.cpu_count() or 1
            with contextlib.closing(_results(job, pending, workers)) as stream:
                for result in stream:
                    if result.status == "built":
                        os.sync()  # the bundle's files are on disk before the registry says "done"
                        _record(registry, policy, result)
                        recorded.add(result.device_id)
                    results.append(result)
                    if on_result:
                        on_result(result)
        except BaseException:
            # Ctrl-C or a failure: the workers are stopped (closing the stream terminates the
            # pool); leave no bundle or vault file that the registry does not vouch for (each
            # removed under its own lock: the directories locked above were replaced by now).
            unrecorded = [r.device_id for r in pending if r.device_id not in recorded]
            clean_leftovers(bundles_dir, unrecorded, vault)
            raise
    return BatchReport(tuple(results), time.perf_counter() - start)


def _not_built(
    ids: Sequence[str],
    done: set[str],
    refused: Mapping[str, str],
    bundles_dir: Path,
    policy: FleetPolicy,
) -> list[DeviceResult]:
    """The results of the devices this run does not build: refused (being flashed) or
    skipped (done), in batch order."""
    results: list[DeviceResult] = []
    for device_id in ids:
        if device_id in refused:
            results.append(DeviceResult(device_id, "failed", error=refused[device_id]))
        elif device_id in done:
            # only a flashed device is kept with other settings (an unflashed one is rebuilt)
            changed = [c for c in _changed_settings(bundles_dir / device_id, policy)
                       if c not in ("the bundle", "merged image")]
            note = (
                f"already flashed with another {', '.join(changed)} than this run's: kept "
                "(a flashed device changes only by OTA)" if changed else None
            )
            results.append(DeviceResult(device_id, "skipped", note=note))
    return results


def _results(
    job: _Job, pending: Sequence[DeviceRequest], jobs: int
) -> Generator[DeviceResult, None, None]:
    if not pending:
        return
    workers = max(1, min(jobs, len(pending)))
    # Loaded keys cannot be pickled: workers inherit them by fork; without fork, run here.
    if workers == 1 or "fork" not in multiprocessing.get_all_start_methods():
        _init_worker(job)
        try:
            for request in pending:
                yield _build_one(request)
        finally:
            _STATE.clear()
        return
    context = multiprocessing.get_context("fork")
    pool = context.Pool(workers, initializer=_init_worker, initargs=(job,))
    try:
        yield from pool.imap_unordered(_build_one, pending, chunksize=1)
        pool.close()
    finally:
        pool.terminate()
        pool.join()
