"""The device identity in encrypted NVS: namespace ``espfleet`` and its keys.

This module is the one definition of what the device firmware finds in NVS; the
virtual device's firmware imports :data:`NVS_NAMESPACE` and :class:`NvsKey` from here.

==================  ======  =====================================================
key                 type    value
==================  ======  =====================================================
``device_cert``     string  the device certificate (PEM), CN = device id
``device_key``      string  its P-256 private key (PKCS#8 PEM)
``ca_chain``        string  issuing CA + root (PEM): verifies the broker
``broker_uri``      string  ``mqtts://host:port`` of the main (mutual-TLS) listener
``recovery_uri``    string  ``mqtts://host:port`` of the recovery listener
``recovery_secret`` string  the recovery listener password (hashed in the registry)
``ota_ca``          string  CA (PEM) that the OTA HTTPS server chains to
``wifi_ssid``       string  optional
``wifi_pass``       string  optional
==================  ======  =====================================================

Recovery secrets are 256-bit random strings; the registry stores only
:func:`hash_recovery_secret` of them (scrypt with a per-device salt, parameters kept
in the hash string so they can be raised later).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass, field
from enum import StrEnum

from espfleet.device_id import parse_device_id
from espfleet.errors import InputError

__all__ = [
    "NVS_NAMESPACE",
    "REQUIRED_KEYS",
    "DeviceIdentity",
    "NvsKey",
    "hash_recovery_secret",
    "new_recovery_secret",
    "verify_recovery_secret",
]

NVS_NAMESPACE = "espfleet"
#: NVS strings hold at most 4000 bytes including the terminating NUL.
NVS_STRING_MAX = 3999
NVS_KEY_MAX = 15


class NvsKey(StrEnum):
    DEVICE_CERT = "device_cert"
    DEVICE_KEY = "device_key"
    CA_CHAIN = "ca_chain"
    BROKER_URI = "broker_uri"
    RECOVERY_URI = "recovery_uri"
    RECOVERY_SECRET = "recovery_secret"
    OTA_CA = "ota_ca"
    WIFI_SSID = "wifi_ssid"
    WIFI_PASS = "wifi_pass"


REQUIRED_KEYS: tuple[NvsKey, ...] = tuple(NvsKey)[:7]

_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**12, 8, 1


@dataclass(frozen=True)
class DeviceIdentity:
    """Everything a device keeps in its ``espfleet`` NVS namespace."""

    device_id: str
    device_cert: str
    device_key: str = field(repr=False)
    ca_chain: str
    broker_uri: str
    recovery_uri: str
    recovery_secret: str = field(repr=False)
    ota_ca: str
    wifi_ssid: str | None = None
    wifi_pass: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        parse_device_id(self.device_id)
        for key, value in self.entries().items():
            if not value or len(value.encode()) > NVS_STRING_MAX:
                raise InputError(
                    f"NVS value {key} of {self.device_id} must be 1 to {NVS_STRING_MAX} bytes, "
                    f"got {len(value.encode())}"
                )
        if self.wifi_pass is not None and self.wifi_ssid is None:
            raise InputError(f"a Wi-Fi password for {self.device_id} without an SSID")
        for uri in (self.broker_uri, self.recovery_uri):
            if not uri.startswith(("mqtts://", "ssl://")):
                raise InputError(f"{uri!r} is not a TLS MQTT URI (mqtts://host:port)")

    def entries(self) -> dict[str, str]:
        """Key -> string value, in a stable order; optional Wi-Fi keys only when set."""
        out = {key.value: getattr(self, key.value) for key in REQUIRED_KEYS}
        if self.wifi_ssid is not None:
            out[NvsKey.WIFI_SSID.value] = self.wifi_ssid
            if self.wifi_pass is not None:
                out[NvsKey.WIFI_PASS.value] = self.wifi_pass
        return out

    @classmethod
    def from_entries(cls, device_id: str, entries: dict[str, str]) -> DeviceIdentity:
        missing = [k.value for k in REQUIRED_KEYS if k.value not in entries]
        if missing:
            raise InputError(f"NVS namespace {NVS_NAMESPACE} lacks {', '.join(missing)}")
        known = {k.value for k in NvsKey}
        return cls(device_id=device_id, **{k: v for k, v in entries.items() if k in known})


def new_recovery_secret() -> str:
    """256 bits from the OS CSPRNG, URL-safe text (an MQTT password)."""
    return secrets.token_urlsafe(32)


def hash_recovery_secret(secret: str, *, salt: bytes | None = None) -> str:
    """``scrypt$n$r$p$<salt b64>$<hash b64>``, what the registry stores."""
    salt = os.urandom(16) if salt is None else salt
    digest = hashlib.scrypt(
        secret.encode(), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P, dklen=32
    )
    return "$".join([
        "scrypt", str(_SCRYPT_N), str(_SCRYPT_R), str(_SCRYPT_P),
        base64.b64encode(salt).decode(), base64.b64encode(digest).decode(),
    ])


def verify_recovery_secret(secret: str, encoded: str) -> bool:
    """Constant-time check of ``secret`` against a :func:`hash_recovery_secret` string."""
    try:
        scheme, n, r, p, salt_b64, digest_b64 = encoded.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest_b64, validate=True)
        actual = hashlib.scrypt(
            secret.encode(), salt=base64.b64decode(salt_b64, validate=True),
            n=int(n), r=int(r), p=int(p), maxmem=2**26, dklen=len(expected),
        )
    except ValueError:
        return False
    return hmac.compare_digest(actual, expected)
