"""Secret detectors over raw bytes: what `esptool read-flash` hands an attacker.

Each detector is a compiled regular expression over ``bytes`` (no Python loop per
byte) followed by a real parse where a format exists: PEM and DER candidates are
loaded with cryptography, so a finding is a certificate or key, not a magic number.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

from cryptography import x509
from cryptography.hazmat.primitives.serialization import (
    load_der_private_key,
    load_pem_private_key,
    load_ssh_private_key,
)

from espfleet.audit.findings import Finding, Severity, printable

__all__ = ["redact", "scan_secrets"]

_FIX_KEY = (
    "treat this key as leaked and replace it; keep private keys only in encrypted NVS "
    "(espfleet provision) on a chip with flash encryption in release mode"
)
_FIX_CERT = (
    "certificates are public, but a readable one means this region is not encrypted: "
    "provision with flash encryption (release mode) so a read-out shows only ciphertext"
)
_FIX_PASSWORD = (
    "treat the credential as leaked and change it; store credentials in encrypted NVS "
    "(espfleet provision), never in the app image, and enable flash encryption"
)

_PEM_BEGIN = re.compile(rb"-----BEGIN ([A-Z0-9 ]{3,40})-----")
_PEM_MAX = 16384

# DER SEQUENCE headers that start a certificate (SEQUENCE of a SEQUENCE, long lengths)
# or a private key (SEQUENCE then INTEGER version 0 or 1: PKCS#1, PKCS#8, SEC1).
_DER_CERT = re.compile(rb"\x30\x82..\x30[\x81\x82]", re.DOTALL)
_DER_KEY = re.compile(rb"\x30(?:[\x20-\x7f]|\x81[\x80-\xff]|\x82..)\x02\x01[\x00\x01]", re.DOTALL)

_OPENSSH_BINARY = re.compile(rb"openssh-key-v1\x00")
_SSH_PUBLIC = re.compile(
    rb"(?:ssh-rsa|ssh-ed25519|ssh-dss|ecdsa-sha2-nistp(?:256|384|521)) AAAA[0-9A-Za-z+/]{20,}"
)
_PUTTY = re.compile(rb"PuTTY-User-Key-File-\d: ")
_AWS_KEY_ID = re.compile(rb"(?:AKIA|ASIA)[A-Z0-9]{16}(?![A-Z0-9])")
#: Run over the lower-cased dump; the value is taken from the original bytes.
_AWS_SECRET = re.compile(rb"aws.{0,20}?secret.{0,24}?[=:\"' \x00]([a-z0-9/+]{40})(?![a-z0-9/+])")
_URL_CREDENTIALS = re.compile(
    rb"://[^\s:/@\x00\"'<>]{1,64}:[^\s/@\x00\"'<>]{1,64}@[A-Za-z0-9.\[\]-]{1,253}"
)
_URL_SCHEME = re.compile(rb"[A-Za-z][A-Za-z0-9+.-]{1,15}\Z")
#: A password-like key (Wi-Fi, MQTT, API; run over the lower-cased dump), then ``=``
#: or ``:`` or a C string end, then a value with no blanks or format directives that
#: ends where a string ends.
_KEYED_SECRET = re.compile(
    rb"(?P<key>passw(?:or)?d|pswd|pass|psk|pwd|secret|token|api[_-]?key)(?![a-z])"
    rb"(?:[\"']?[ \t]{0,3}[=:][ \t]{0,3}[\"']?(?P<v1>[\x21-\x24\x26\x28-\x7e]{6,64})"
    rb"(?=[\x00\"'\s,;&]|\Z)"
    rb"|\x00{1,16}(?P<v2>[\x21-\x24\x26-\x7e]{6,64})\x00)"
)
_KEY_PREFIX = re.compile(rb"[a-z0-9_.-]{0,16}\Z")
#: C constant names (ESP_ERR_WIFI_TIMEOUT) follow their neighbours in string tables.
_IDENTIFIER = re.compile(rb"[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+")


def scan_secrets(data: bytes) -> list[Finding]:
    """Every plaintext secret, key or certificate the detectors recognise."""
    lowered = data.lower()
    findings: list[Finding] = []
    for detector in _DETECTORS:
        findings.extend(detector(data, lowered))
    return findings


def _pem(data: bytes, lowered: bytes) -> Iterator[Finding]:
    for match in _PEM_BEGIN.finditer(data):
        label = match.group(1).decode()
        end_marker = b"-----END " + match.group(1) + b"-----"
        end = data.find(end_marker, match.end(), match.end() + _PEM_MAX)
        length = (end + len(end_marker) - match.start()) if end >= 0 else len(match.group(0))
        block = data[match.start() : match.start() + length]
        where = match.start()
        if "PRIVATE KEY" in label:
            encrypted = "ENCRYPTED" in label or b"Proc-Type: 4,ENCRYPTED" in block
            yield Finding(
                Severity.HIGH if encrypted else Severity.CRITICAL,
                "pem-private-key",
                where,
                length,
                f"plaintext PEM {label} ({_describe_pem_key(label, block)})"
                + (": passphrase-protected, open to offline guessing" if encrypted else ""),
                _FIX_KEY,
            )
        elif label in ("CERTIFICATE", "TRUSTED CERTIFICATE", "X509 CERTIFICATE"):
            yield Finding(
                Severity.HIGH,
                "pem-certificate",
                where,
                length,
                f"plaintext PEM certificate ({_describe_pem_cert(block)})",
                _FIX_CERT,
            )
        else:
            yield Finding(
                Severity.MEDIUM,
                "pem-other",
                where,
                length,
                f"plaintext PEM {label}: readable structured data, so this region is not "
                "encrypted",
                _FIX_CERT,
            )


def _describe_pem_key(label: str, block: bytes) -> str:
    key: object
    try:
        if label == "OPENSSH PRIVATE KEY":
            key = load_ssh_private_key(block, None)
        else:
            key = load_pem_private_key(block, None, unsafe_skip_rsa_key_validation=True)
    except (ValueError, TypeError) as error:
        return f"does not load: {str(error)[:60]}"
    return f"{type(key).__name__.lstrip('_')} loads without a passphrase"


def _describe_pem_cert(block: bytes) -> str:
    try:
        cert = x509.load_pem_x509_certificate(block)
    except ValueError:
        return "truncated or malformed"
    return f"subject {cert.subject.rfc4514_string()}"


def _der_length(data: bytes, offset: int) -> int | None:
    """Total length of the DER element at ``offset`` (tag + length + content)."""
    first = data[offset + 1]
    if first < 0x80:
        return 2 + first
    count = first & 0x7F
    if count not in (1, 2):
        return None
    body = int.from_bytes(data[offset + 2 : offset + 2 + count], "big")
    return 2 + count + body


def _der(data: bytes, lowered: bytes) -> Iterator[Finding]:
    for match in _DER_CERT.finditer(data):
        start = match.start()
        total = _der_length(data, start)
        if total is None or start + total > len(data):
            continue
        try:
            cert = x509.load_der_x509_certificate(data[start : start + total])
            subject = cert.subject.rfc4514_string()
        except ValueError:
            continue
        yield Finding(
            Severity.HIGH,
            "der-certificate",
            start,
            total,
            f"plaintext DER certificate (subject {subject})",
            _FIX_CERT,
        )
    for match in _DER_KEY.finditer(data):
        start = match.start()
        total = _der_length(data, start)
        if total is None or start + total > len(data):
            continue
        try:
            key = load_der_private_key(
                data[start : start + total], None, unsafe_skip_rsa_key_validation=True
            )
        except (ValueError, TypeError):
            continue
        yield Finding(
            Severity.CRITICAL,
            "der-private-key",
            start,
            total,
            f"plaintext DER private key ({type(key).__name__.lstrip('_')})",
            _FIX_KEY,
        )


Detector = Callable[[bytes, bytes], Iterator[Finding]]


def _regex_detector(
    pattern: re.Pattern[bytes], severity: Severity, kind: str, what: str, fix: str
) -> Detector:
    def detect(data: bytes, lowered: bytes) -> Iterator[Finding]:
        for match in pattern.finditer(data):
            yield _match_finding(severity, kind, match.start(), match.group(0), what, fix)

    return detect


def _match_finding(
    severity: Severity, kind: str, start: int, text: bytes, what: str, fix: str
) -> Finding:
    return Finding(severity, kind, start, len(text), f"{what}: {redact(text)}", fix)


def _aws_keys(data: bytes, lowered: bytes) -> Iterator[Finding]:
    for match in _AWS_KEY_ID.finditer(data):
        if match.start() and data[match.start() - 1 : match.start()].isalnum():
            continue
        yield _match_finding(
            Severity.CRITICAL, "aws-access-key", match.start(), match.group(0),
            "AWS access key id (its secret key is usually stored next to it)", _FIX_PASSWORD,
        )
    for match in _AWS_SECRET.finditer(lowered):
        yield _match_finding(
            Severity.CRITICAL, "aws-secret-key", match.start(1),
            data[match.start(1) : match.end(1)], "AWS secret access key", _FIX_PASSWORD,
        )


def _url_credentials(data: bytes, lowered: bytes) -> Iterator[Finding]:
    for match in _URL_CREDENTIALS.finditer(data):
        scheme = _URL_SCHEME.search(data, max(0, match.start() - 16), match.start())
        if scheme is None:
            continue
        yield _match_finding(
            Severity.CRITICAL, "url-credentials", scheme.start(),
            data[scheme.start() : match.end()], "URL with a user name and password",
            _FIX_PASSWORD,
        )


def _keyed_secrets(data: bytes, lowered: bytes) -> Iterator[Finding]:
    for match in _KEYED_SECRET.finditer(lowered):
        group = "v1" if match.group("v1") is not None else "v2"
        value = data[match.start(group) : match.end(group)]
        if _IDENTIFIER.fullmatch(value):
            continue
        prefix = _KEY_PREFIX.search(lowered, max(0, match.start() - 16), match.start())
        key_start = prefix.start() if prefix else match.start()
        key = data[key_start : match.end("key")].decode("ascii", "replace")
        if _IDENTIFIER.fullmatch(key.encode()):
            continue  # ESP_ERR_WIFI_PASSWORD and friends: an error name, not a key
        yield Finding(
            Severity.CRITICAL,
            "password-like",
            match.start(group),
            len(value),
            f"a value next to the key {key!r} that looks like a password: "
            f"{redact(value)}",
            _FIX_PASSWORD,
        )


def redact(secret: bytes) -> str:
    """Enough of a secret to recognise it in a report, not enough to use it."""
    text = printable(secret.decode("ascii", "replace"))
    if len(text) <= 8:
        return text[:2] + "*" * (len(text) - 2)
    return text[:4] + "*" * min(len(text) - 6, 24) + text[-2:]


_DETECTORS: tuple[Detector, ...] = (
    _pem,
    _der,
    _regex_detector(
        _OPENSSH_BINARY, Severity.CRITICAL, "openssh-private-key",
        "binary OpenSSH private key", _FIX_KEY,
    ),
    _regex_detector(
        _PUTTY, Severity.CRITICAL, "putty-private-key", "PuTTY private key file", _FIX_KEY
    ),
    _regex_detector(
        _SSH_PUBLIC, Severity.MEDIUM, "ssh-public-key",
        "SSH public key (not secret, but this region is readable)", _FIX_CERT,
    ),
    _aws_keys,
    _url_credentials,
    _keyed_secrets,
)
