"""Certificate profiles: what each kind of fleet certificate contains.

Pure builders over keys and times (no I/O, no clock: ``now`` is an argument):

* root CA: self-signed, CA with pathLen 1, keyCertSign + cRLSign, long-lived;
* issuing CA: signed by the root, CA with pathLen 0, signs devices, servers and the CRL;
* server: the broker's and the OTA server's TLS certificate, SANs (DNS names and IP
  addresses) from fleet.toml, EKU serverAuth;
* device: CN = device id (also a SAN dNSName, so RFC 5280 verifiers that want a SAN
  accept it), EKU clientAuth, lifetime from fleet.toml.

Every certificate carries subject and authority key identifiers, and none outlives its
issuer (``not_after`` is clamped to the issuer's).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from espfleet.errors import InputError
from espfleet.pki.keys import PrivateKey

__all__ = [
    "CLOCK_SKEW",
    "PublicKey",
    "device_certificate",
    "issuing_ca_certificate",
    "root_ca_certificate",
    "server_certificate",
]

PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey
#: not_before is back-dated by this much, so a device whose clock runs a little behind
#: still accepts a certificate issued a moment ago.
CLOCK_SKEW = dt.timedelta(minutes=5)


@dataclass(frozen=True)
class _Issuer:
    cert: x509.Certificate | None
    key: PrivateKey


#: X.520's upper bound for a CN (cryptography refuses longer ones).
_CN_MAX = 64


def _name(org: str, common_name: str) -> x509.Name:
    """O=org, CN=common_name; a CN built as ``org + suffix`` (``Acme Fleet Root CA``)
    that passes 64 characters keeps its suffix and shortens the org part (O= keeps the
    whole org, which may itself be 64 characters)."""
    if len(common_name) > _CN_MAX and common_name.startswith(org):
        suffix = common_name[len(org):]
        common_name = org[: _CN_MAX - len(suffix)].rstrip() + suffix
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _key_usage(*, signing: bool, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=signing,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _build(
    *,
    subject: x509.Name,
    public_key: PublicKey,
    issuer: _Issuer,
    now: dt.datetime,
    days: int,
    path_length: int | None,
    ca: bool,
    extensions: Sequence[tuple[x509.ExtensionType, bool]] = (),
) -> x509.Certificate:
    if days <= 0:
        raise InputError(f"a certificate lifetime must be at least one day, got {days}")
    not_before = now - CLOCK_SKEW
    not_after = now + dt.timedelta(days=days)
    issuer_name = subject if issuer.cert is None else issuer.cert.subject
    if issuer.cert is not None:
        not_after = min(not_after, issuer.cert.not_valid_after_utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
            critical=False,
        )
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(issuer.key, hashes.SHA256())


def _ca_certificate(
    key: PrivateKey, *, org: str, label: str, days: int, now: dt.datetime, issuer: _Issuer,
    path_length: int,
) -> x509.Certificate:
    return _build(
        subject=_name(org, f"{org} Fleet {label} CA"),
        public_key=key.public_key(),
        issuer=issuer,
        now=now,
        days=days,
        path_length=path_length,
        ca=True,
        extensions=[(_key_usage(signing=issuer.cert is not None, ca=True), True)],
    )


def root_ca_certificate(
    key: PrivateKey, *, org: str, days: int, now: dt.datetime
) -> x509.Certificate:
    """Self-signed root, pathLen 1 (it signs only the issuing CA)."""
    return _ca_certificate(
        key, org=org, label="Root", days=days, now=now, issuer=_Issuer(None, key), path_length=1
    )


def issuing_ca_certificate(
    key: PrivateKey,
    *,
    org: str,
    days: int,
    now: dt.datetime,
    root_cert: x509.Certificate,
    root_key: PrivateKey,
) -> x509.Certificate:
    """Issuing CA signed by the root, pathLen 0 (it signs only end entities and the CRL)."""
    return _ca_certificate(
        key, org=org, label="Issuing", days=days, now=now,
        issuer=_Issuer(root_cert, root_key), path_length=0,
    )


def _general_names(hosts: Sequence[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def _end_entity(
    public_key: PublicKey,
    *,
    subject: x509.Name,
    usage: x509.ObjectIdentifier,
    names: list[x509.GeneralName],
    days: int,
    now: dt.datetime,
    issuer: _Issuer,
) -> x509.Certificate:
    return _build(
        subject=subject,
        public_key=public_key,
        issuer=issuer,
        now=now,
        days=days,
        path_length=None,
        ca=False,
        extensions=[
            (_key_usage(signing=True, ca=False), True),
            (x509.ExtendedKeyUsage([usage]), False),
            (x509.SubjectAlternativeName(names), False),
        ],
    )


def server_certificate(
    public_key: PublicKey,
    *,
    org: str,
    common_name: str,
    hosts: Sequence[str],
    days: int,
    now: dt.datetime,
    issuer_cert: x509.Certificate,
    issuer_key: PrivateKey,
) -> x509.Certificate:
    """TLS server certificate; ``hosts`` are DNS names or IP addresses (one SAN each)."""
    if not hosts:
        raise InputError(f"server certificate {common_name!r} needs at least one host name or IP")
    return _end_entity(
        public_key, subject=_name(org, common_name), usage=ExtendedKeyUsageOID.SERVER_AUTH,
        names=_general_names(hosts), days=days, now=now,
        issuer=_Issuer(issuer_cert, issuer_key),
    )


def device_certificate(
    public_key: PublicKey,
    *,
    org: str,
    device_id: str,
    days: int,
    now: dt.datetime,
    issuer_cert: x509.Certificate,
    issuer_key: PrivateKey,
) -> x509.Certificate:
    """Device (MQTT client) certificate: CN = device id, EKU clientAuth."""
    return _end_entity(
        public_key, subject=_name(org, device_id), usage=ExtendedKeyUsageOID.CLIENT_AUTH,
        names=[x509.DNSName(device_id)], days=days, now=now,
        issuer=_Issuer(issuer_cert, issuer_key),
    )
