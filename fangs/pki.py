"""
A small PKI for users without one of their own: a CA, server certificates
with SANs (IPv6 literals as IP SANs), runner and operator client
certificates carrying FANGS identities, and a CRL.

    fangs pki init DIR [--days N]
    fangs pki issue-server DIR NAME... (DNS names or IP addresses)
    fangs pki issue-runner DIR RUNNER_ID
    fangs pki issue-operator DIR NAME
    fangs pki revoke DIR CERT.pem

Files in DIR: ca.pem, ca-key.pem, crl.pem, and <name>.pem / <name>-key.pem
per issued certificate.  Keys are ECDSA P-256, written mode 0600.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import sys
from typing import List, Optional, Sequence, Tuple

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from urllib.parse import quote

from fangs.tls import OPERATOR_URI, RUNNER_URI, SCOPE_NAMES, parseScopes

DAY = datetime.timedelta(days=1)


class PKIError(Exception):
    pass


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def keyPEM(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def certPEM(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def makeCA(commonName: str = "fangs-ca", days: int = 3650) -> Tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, commonName)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - DAY)
        .not_valid_after(now + days * DAY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _sanFor(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name.strip("[]")))
    except ValueError:
        return x509.DNSName(name)


def issue(
    ca: x509.Certificate,
    caKey: ec.EllipticCurvePrivateKey,
    commonName: str,
    kind: str,
    names: Sequence[str] = (),
    days: int = 365,
    notBefore: Optional[datetime.datetime] = None,
    notAfter: Optional[datetime.datetime] = None,
    scopes: Sequence[str] = ("read",),
    tenant: str = "",
) -> Tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """
    A leaf certificate.  C{kind} is C{server} (SANs from C{names}),
    C{runner} (SAN URI C{fangs://runner/<commonName>}) or C{operator} (SAN
    URI C{fangs://operator/<commonName>?scopes=<scopes>}, and with
    C{tenant} a second SAN URI C{urn:fangs:tenant:<tenant>}); client
    certificates carry the client-auth extended key usage.
    """
    key = _key()
    now = _now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, commonName)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(notBefore or now - DAY)
        .not_valid_after(notAfter or now + days * DAY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(caKey.public_key()), critical=False
        )
    )
    if kind == "server":
        sans = [_sanFor(n) for n in (names or [commonName])]
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    elif kind in ("runner", "operator"):
        uri = (RUNNER_URI if kind == "runner" else OPERATOR_URI) + quote(commonName, safe="-_.:@")
        if kind == "operator":
            try:
                short = [k for k, v in SCOPE_NAMES.items() if v in parseScopes(scopes)]
            except ValueError as e:
                raise PKIError(str(e)) from None
            uri += "?scopes=" + ",".join(s for s in ("read", "write", "admin") if s in short)
        uris = [x509.UniformResourceIdentifier(uri)]
        if kind == "operator" and tenant:
            from fangs.tenants import TenantError, checkTenant

            try:
                uris.append(x509.UniformResourceIdentifier("urn:fangs:tenant:" + checkTenant(tenant, allowAll=True)))
            except TenantError as e:
                raise PKIError(str(e)) from None
        builder = builder.add_extension(x509.SubjectAlternativeName(uris), critical=False)
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    else:
        raise PKIError("unknown certificate kind %r" % (kind,))
    return builder.sign(caKey, hashes.SHA256()), key


def makeCRL(
    ca: x509.Certificate, caKey: ec.EllipticCurvePrivateKey, revoked: Sequence[int] = (), days: int = 30
) -> x509.CertificateRevocationList:
    now = _now()
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.subject)
        .last_update(now - DAY)
        .next_update(now + days * DAY)
    )
    for serial in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now - DAY).build()
        )
    return builder.sign(caKey, hashes.SHA256())


# ---------------------------------------------------------------------------
# Files


def _write(path: str, data: bytes, private: bool = False) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _loadCA(directory: str) -> Tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        with open(os.path.join(directory, "ca.pem"), "rb") as f:
            ca = x509.load_pem_x509_certificate(f.read())
        with open(os.path.join(directory, "ca-key.pem"), "rb") as f:
            key = serialization.load_pem_private_key(f.read(), None)
    except FileNotFoundError:
        raise PKIError("%s has no CA; run `fangs pki init %s` first" % (directory, directory)) from None
    return ca, key  # type: ignore[return-value]


def _revokedSerials(directory: str) -> List[int]:
    path = os.path.join(directory, "revoked.txt")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [int(line.strip(), 16) for line in f if line.strip()]


def initCA(directory: str, days: int = 3650) -> str:
    os.makedirs(directory, exist_ok=True)
    if os.path.exists(os.path.join(directory, "ca.pem")):
        raise PKIError("%s already holds a CA (ca.pem); refusing to overwrite it" % (directory,))
    ca, key = makeCA(days=days)
    _write(os.path.join(directory, "ca-key.pem"), keyPEM(key), private=True)
    _write(os.path.join(directory, "ca.pem"), certPEM(ca))
    _write(os.path.join(directory, "crl.pem"), makeCRL(ca, key).public_bytes(serialization.Encoding.PEM))
    return os.path.join(directory, "ca.pem")


def issueFiles(
    directory: str, kind: str, name: str, sans: Sequence[str] = (), days: int = 365, scopes: Sequence[str] = ("read",),
    tenant: str = "",
) -> Tuple[str, str]:
    ca, caKey = _loadCA(directory)
    if not name or "/" in name or name.startswith("."):
        raise PKIError("name %r cannot be used as a file name" % (name,))
    cert, key = issue(ca, caKey, name, kind, sans, days, scopes=scopes, tenant=tenant)
    base = os.path.join(directory, name if kind != "server" else "server")
    _write(base + "-key.pem", keyPEM(key), private=True)
    _write(base + ".pem", certPEM(cert))
    return base + ".pem", base + "-key.pem"


def revokeFile(directory: str, certPath: str) -> int:
    ca, caKey = _loadCA(directory)
    with open(certPath, "rb") as f:
        cert = x509.load_pem_x509_certificate(f.read())
    serials = _revokedSerials(directory)
    if cert.serial_number not in serials:
        serials.append(cert.serial_number)
    with open(os.path.join(directory, "revoked.txt"), "w") as f:
        f.write("".join("%x\n" % (s,) for s in serials))
    _write(os.path.join(directory, "crl.pem"), makeCRL(ca, caKey, serials).public_bytes(serialization.Encoding.PEM))
    return cert.serial_number


def main(argv: Optional[Sequence[str]] = None, prog: str = "fangs pki") -> int:
    parser = argparse.ArgumentParser(prog=prog, description="A small PKI for FANGS orchestrators, runners and operators.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("init", help="create a CA and an empty CRL in DIR")
    p.add_argument("dir")
    p.add_argument("--days", type=int, default=3650)
    p = sub.add_parser("issue-server", help="issue DIR/server.pem for the given DNS names and IP addresses")
    p.add_argument("dir")
    p.add_argument("names", nargs="+")
    p.add_argument("--days", type=int, default=365)
    for kind in ("runner", "operator"):
        p = sub.add_parser("issue-" + kind, help="issue DIR/NAME.pem, a %s client certificate (SAN fangs://%s/NAME)" % (kind, kind))
        p.add_argument("dir")
        p.add_argument("name")
        p.add_argument("--days", type=int, default=365)
        if kind == "operator":
            p.add_argument("--scopes", default="read",
                           help="comma-separated operator scopes in the certificate: read, write, admin (default: read)")
            p.add_argument("--tenant", default="",
                           help="the operator's tenant (SAN urn:fangs:tenant:TENANT; * for all tenants); default: none named"
                                " (an admin certificate is then admin of all tenants, any other is of tenant default)")
    p = sub.add_parser("revoke", help="revoke a certificate and rewrite DIR/crl.pem")
    p.add_argument("dir")
    p.add_argument("cert")
    args = parser.parse_args(argv)
    try:
        if args.command == "init":
            print("CA written to %s (key ca-key.pem is private; keep it offline)" % (initCA(args.dir, args.days),))
        elif args.command == "issue-server":
            cert, key = issueFiles(args.dir, "server", args.names[0], args.names, args.days)
            print("server certificate %s (key %s) for %s" % (cert, key, ", ".join(args.names)))
        elif args.command in ("issue-runner", "issue-operator"):
            kind = args.command.split("-", 1)[1]
            scopes = args.scopes.split(",") if kind == "operator" else ()
            cert, key = issueFiles(args.dir, kind, args.name, days=args.days, scopes=scopes,
                                   tenant=getattr(args, "tenant", "") or "")
            suffix = "?scopes=" + args.scopes if kind == "operator" else ""
            print("%s certificate %s (key %s), identity fangs://%s/%s%s" % (kind, cert, key, kind, args.name, suffix))
        elif args.command == "revoke":
            serial = revokeFile(args.dir, args.cert)
            print("revoked serial %x; send SIGHUP to the orchestrator to load %s" % (serial, os.path.join(args.dir, "crl.pem")))
    except (PKIError, OSError, ValueError) as e:
        print("%s: %s" % (prog, e), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
