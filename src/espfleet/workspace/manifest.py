"""The workspace manifest: SHA-256 of every file that defines the fleet, signed by the
issuing CA.

``Workspace.open`` checks it without a passphrase (the issuing certificate's public key
verifies the signature), so an edited fleet.toml, a swapped CA certificate or a replaced
key file is refused before anything uses it. A deliberate edit of fleet.toml is accepted
again by re-signing (``espfleet ca reseal``, which needs the passphrase and accepts a
change of fleet.toml only).
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from espfleet.errors import WorkspaceError
from espfleet.pki.keys import PrivateKey
from espfleet.pki.store import read_bytes

__all__ = ["MANIFEST", "build_manifest", "changed_files", "signed_digests", "verify_manifest"]

MANIFEST = "pki/workspace-manifest.json"
_VERSION = 1


def _digests(root: Path, names: Iterable[str]) -> dict[str, str]:
    return {
        name: hashlib.sha256(read_bytes(root / name, name=name)).hexdigest()
        for name in sorted(names)
    }


def _payload(files: dict[str, str]) -> bytes:
    return json.dumps({"version": _VERSION, "files": files}, sort_keys=True).encode()


def build_manifest(root: Path, names: Iterable[str], key: PrivateKey) -> bytes:
    """The manifest over ``names`` (workspace-relative), signed with the issuing CA key."""
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise WorkspaceError("the issuing CA key must be an ECDSA key to sign the manifest")
    files = _digests(root, names)
    signature = key.sign(_payload(files), ec.ECDSA(hashes.SHA256()))
    document = {
        "version": _VERSION,
        "files": files,
        "signed_by": "pki/issuing-ca.pem",
        "signature": base64.b64encode(signature).decode(),
    }
    return (json.dumps(document, indent=2, sort_keys=True) + "\n").encode()


def changed_files(root: Path, names: Iterable[str], issuing_cert: x509.Certificate) -> list[str]:
    """Files whose digest differs from the manifest (whose signature is verified first)."""
    recorded = signed_digests(root, issuing_cert)
    actual = _digests(root, names)
    return [name for name in sorted(actual) if recorded.get(name) != actual[name]]


def signed_digests(root: Path, issuing_cert: x509.Certificate) -> dict[str, str]:
    """The manifest's file digests, after checking that the issuing CA signed them."""
    raw = read_bytes(root / MANIFEST, name=MANIFEST)
    try:
        document = json.loads(raw)
        files = document["files"]
        signature = base64.b64decode(document["signature"], validate=True)
        if document["version"] != _VERSION or not isinstance(files, dict):
            raise ValueError("unknown manifest version")
    except (ValueError, KeyError, TypeError):
        raise WorkspaceError(
            f"{MANIFEST} is damaged: restore it from a backup (or, if you trust every "
            "workspace file, re-sign with `espfleet ca reseal --unsafe-accept-all-files`)"
        ) from None
    public_key = issuing_cert.public_key()
    try:
        if not isinstance(public_key, ec.EllipticCurvePublicKey):
            raise InvalidSignature
        public_key.verify(signature, _payload(files), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise WorkspaceError(
            f"{MANIFEST} is not signed by this workspace's issuing CA: the manifest or "
            "pki/issuing-ca.pem was replaced; restore them from a backup"
        ) from None
    return files


def verify_manifest(root: Path, names: Iterable[str], issuing_cert: x509.Certificate) -> None:
    """Raise :class:`WorkspaceError` naming the first file that differs from the manifest."""
    files = signed_digests(root, issuing_cert)
    expected = set(names)
    if set(files) != expected:
        missing = ", ".join(sorted(expected - set(files))) or "none"
        raise WorkspaceError(f"{MANIFEST} does not cover the workspace files (missing: {missing})")
    actual = _digests(root, expected)
    changed = [name for name in sorted(expected) if actual[name] != files[name]]
    if changed == ["fleet.toml"]:
        raise WorkspaceError(
            "fleet.toml was modified after the workspace was signed (tampered?): if you "
            "edited it on purpose, run `espfleet ca reseal`"
        )
    if changed:
        raise WorkspaceError(
            f"{', '.join(changed)} {'was' if len(changed) == 1 else 'were'} modified after "
            "the workspace was signed (tampered?): restore "
            f"{'it' if len(changed) == 1 else 'them'} from a backup"
        )
