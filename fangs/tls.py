"""
TLS for FANGS, on Twisted's native pyOpenSSL contexts.

Server side: L{ReloadableServerTLS} builds a C{CertificateOptions} (TLS >= 1.2)
from PEM files, optionally requiring client certificates signed by a CA and
checking a CRL, and can re-read all of them (SIGHUP) without touching
established connections: each new connection takes the current context.

Identity: L{peerIdentity} is the one function that reads a request's client
certificate.  A certificate names a peer only when it carries the client-auth
extended key usage and a SAN URI C{fangs://runner/<id>} or
C{fangs://operator/<name>?scopes=read,write} (the subject CN counts as a
runner id only with C{acceptCN}, C{--accept-cn-identity}).  An operator
certificate without C{scopes} is read-only.

On every reload (SIGHUP, or a changed file seen by L{ReloadableServerTLS.reloadIfChanged}),
established connections whose client certificate is now revoked, expired or
no longer signed by the client CA are closed.
"""

from __future__ import annotations

import datetime
import os
import weakref
from typing import Any, Dict, List, Optional, Sequence, Tuple
from urllib.parse import parse_qs, unquote

import attrs
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL, crypto
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLContextFactory
from zope.interface import implementer
from twisted.logger import Logger

log = Logger()

EXPIRY_WARNING = datetime.timedelta(days=14)
RUNNER_URI = "fangs://runner/"
OPERATOR_URI = "fangs://operator/"


class TLSConfigError(ValueError):
    """
    TLS files that cannot be used; the message names the file and the problem.
    """


#: Short scope names in an operator SAN URI and in the config's mapping.
SCOPE_NAMES = {"read": "orchestrator:read", "write": "orchestrator:write", "admin": "orchestrator:admin"}
DEFAULT_OPERATOR_SCOPES: Tuple[str, ...] = ("orchestrator:read",)


@attrs.frozen
class Identity:
    kind: str  # "runner" or "operator"
    name: str
    subject: str
    #: Operator scopes (full names); runners have none.
    scopes: Tuple[str, ...] = ()
    #: The operator's tenant as the certificate or the config names it
    #: (C{*}: all tenants), or "" when neither does.
    tenant: str = ""

    def __str__(self) -> str:
        return "%s:%s" % (self.kind, self.name)


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise TLSConfigError("cannot read %s %s: %s" % (what, path, e.strerror)) from None


def loadCertificates(pem: bytes, path: str) -> List[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise TLSConfigError("%s holds no PEM certificate" % (path,)) from None
    if not certs:
        raise TLSConfigError("%s holds no PEM certificate" % (path,))
    return certs


def parseScopes(names: Sequence[str]) -> Tuple[str, ...]:
    """
    C{read}/C{write}/C{admin} (or their full C{orchestrator:} names) as
    full scope names.

    @raise ValueError: an unknown name.
    """
    out = []
    for n in names:
        n = n.strip()
        if not n:
            continue
        full = SCOPE_NAMES.get(n, n)
        if full not in SCOPE_NAMES.values():
            raise ValueError("unknown operator scope %r (read, write or admin)" % (n,))
        out.append(full)
    return tuple(sorted(set(out)))


def _hasClientAuth(cert: x509.Certificate) -> bool:
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return False
    return ExtendedKeyUsageOID.CLIENT_AUTH in eku


#: A SAN URI naming the operator certificate's tenant (C{*}: all tenants).
TENANT_URN = "urn:fangs:tenant:"


def _certificateTenant(uris: Sequence[str], query: str) -> Optional[str]:
    """
    The tenant an operator certificate names: a SAN URI
    C{urn:fangs:tenant:<name>}, else C{tenant=} in its operator URI; ""
    when it names none; None when it names an invalid one or several.
    """
    from fangs.tenants import TenantError, checkTenant

    named = {u[len(TENANT_URN):] for u in uris if u.startswith(TENANT_URN)}
    named |= set(parse_qs(query).get("tenant") or ())
    if not named:
        return ""
    if len(named) > 1:
        return None
    try:
        return checkTenant(named.pop(), allowAll=True)
    except TenantError:
        return None


def identityOf(
    cert: x509.Certificate,
    acceptCN: bool = False,
    operatorScopes: Optional[Dict[str, Sequence[str]]] = None,
    operatorTenants: Optional[Dict[str, str]] = None,
) -> Optional[Identity]:
    """
    The FANGS identity a certificate carries, or None (no client-auth EKU,
    no FANGS SAN URI and CN identities not accepted, or unreadable scopes).

    An operator's scopes come from C{operatorScopes} (the config's mapping,
    by name) when it names the operator, else from the URI's C{scopes}
    query, else read only.  Its tenant likewise comes from
    C{operatorTenants} (the config's mapping) when it names the operator,
    else from a SAN URI C{urn:fangs:tenant:<name>} or C{tenant=<name>} in
    the operator URI; a certificate naming an invalid tenant, or two,
    names no identity.
    """
    subject = cert.subject.rfc4514_string()
    if not _hasClientAuth(cert):
        return None
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    for uri in uris:
        if uri.startswith(RUNNER_URI) and len(uri) > len(RUNNER_URI):
            name = uri[len(RUNNER_URI) :]
            if "?" in name or "#" in name:
                return None
            return Identity("runner", unquote(name), subject)
        if uri.startswith(OPERATOR_URI) and len(uri) > len(OPERATOR_URI):
            rest = uri[len(OPERATOR_URI) :]
            name, _, query = rest.partition("?")
            name = unquote(name)
            if not name:
                return None
            try:
                if operatorScopes is not None and name in operatorScopes:
                    scopes = parseScopes(operatorScopes[name])
                else:
                    given = parse_qs(query).get("scopes")
                    scopes = parseScopes(",".join(given).split(",")) if given else DEFAULT_OPERATOR_SCOPES
            except ValueError:
                return None
            if operatorTenants is not None and name in operatorTenants:
                tenant: Optional[str] = operatorTenants[name]
            else:
                tenant = _certificateTenant(uris, query)
            if tenant is None:
                return None
            return Identity("operator", name, subject, scopes or DEFAULT_OPERATOR_SCOPES, tenant)
    if acceptCN:
        cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if cns and isinstance(cns[0].value, str) and cns[0].value:
            return Identity("runner", cns[0].value, subject)
    return None


def peerCertificate(request: Any) -> Optional[x509.Certificate]:
    """
    The client certificate of C{request}'s connection, or None.  The one
    place that reads peer certificates.
    """
    transport = getattr(getattr(request, "channel", None), "transport", None)
    getPeer = getattr(transport, "getPeerCertificate", None)
    if getPeer is None:
        return None
    try:
        peer = getPeer()
    except Exception:
        return None
    if peer is None:
        return None
    return peer.to_cryptography()


def peerIdentity(request: Any, acceptCN: bool = False, operatorScopes: Optional[Dict[str, Sequence[str]]] = None,
                 operatorTenants: Optional[Dict[str, str]] = None) -> Optional[Identity]:
    """
    The identity of the client certificate of C{request}'s connection, or
    None without TLS, without a client certificate or without a usable
    identity.
    """
    cert = peerCertificate(request)
    if cert is None:
        return None
    return identityOf(cert, acceptCN, operatorScopes, operatorTenants)


def _notAfter(cert: x509.Certificate) -> datetime.datetime:
    try:
        return cert.not_valid_after_utc
    except AttributeError:  # cryptography < 42
        return cert.not_valid_after.replace(tzinfo=datetime.timezone.utc)


@implementer(IOpenSSLContextFactory)
class ReloadableServerTLS:
    """
    A server context factory whose files can be re-read at any time.

    @ivar certificateExpiry: the server certificate's notAfter as a POSIX
        timestamp (for the metric).
    """

    def __init__(
        self,
        certPath: str,
        keyPath: str,
        clientCAPath: Optional[str] = None,
        crlPath: Optional[str] = None,
        now: Any = None,
    ) -> None:
        self.certPath = certPath
        self.keyPath = keyPath
        self.clientCAPath = clientCAPath
        self.crlPath = crlPath
        self._now = now or (lambda: datetime.datetime.now(datetime.timezone.utc))
        self.certificateExpiry = 0.0
        self._options: Any = None
        self._cas: List[x509.Certificate] = []
        self._crl: Optional[x509.CertificateRevocationList] = None
        self._mtimes: Tuple[float, ...] = ()
        #: Established TLS connections (protocols), for closing the ones
        #: whose client certificate a reload revoked.
        self.connections: "weakref.WeakSet[Any]" = weakref.WeakSet()
        self.reload()

    def reload(self) -> None:
        """
        Read every file again; on any problem keep serving with the previous
        context and raise L{TLSConfigError}.
        """
        certPEM = _read(self.certPath, "certificate")
        keyPEM = _read(self.keyPath, "private key")
        chain = loadCertificates(certPEM, self.certPath)
        try:
            key = crypto.load_privatekey(crypto.FILETYPE_PEM, keyPEM)
        except crypto.Error:
            raise TLSConfigError("%s is not a PEM private key" % (self.keyPath,)) from None
        leaf = crypto.X509.from_cryptography(chain[0])
        extra = [crypto.X509.from_cryptography(c) for c in chain[1:]]
        kwargs: dict = {}
        mtimes = self._currentMtimes()
        cas: List[x509.Certificate] = []
        if self.clientCAPath:
            cas = loadCertificates(_read(self.clientCAPath, "client CA"), self.clientCAPath)
            kwargs["trustRoot"] = ssl.trustRootFromCertificates(
                [ssl.Certificate(crypto.X509.from_cryptography(c)) for c in cas]
            )
        crl = None
        if self.crlPath:
            crlPEM = _read(self.crlPath, "CRL")
            try:
                crl = x509.load_pem_x509_crl(crlPEM)
            except ValueError:
                raise TLSConfigError("%s is not a PEM CRL" % (self.crlPath,)) from None
        try:
            options = ssl.CertificateOptions(
                privateKey=key,
                certificate=leaf,
                extraCertChain=extra,
                raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
                **kwargs,
            )
            context = options.getContext()
            context.check_privatekey()
        except (SSL.Error, crypto.Error, ValueError) as e:
            raise TLSConfigError("TLS certificate %s and key %s do not work together: %s" % (self.certPath, self.keyPath, e)) from None
        if crl is not None:
            store = context.get_cert_store()
            store.add_crl(crl)
            store.set_flags(crypto.X509StoreFlags.CRL_CHECK)
        self._options = options
        self._cas = cas
        self._crl = crl
        self._mtimes = mtimes
        self.closeRefused()
        notAfter = _notAfter(chain[0])
        self.certificateExpiry = notAfter.timestamp()
        left = notAfter - self._now()
        if left < EXPIRY_WARNING:
            log.warn(
                "server certificate {path} expires {when} ({days:.1f} days left)",
                path=self.certPath,
                when=notAfter.isoformat(),
                days=left.total_seconds() / 86400,
            )
        log.info(
            "TLS loaded: certificate {cert}, client CA {ca}, CRL {crl}",
            cert=self.certPath,
            ca=self.clientCAPath or "none (no client certificates)",
            crl=self.crlPath or "none",
        )

    def getContext(self) -> SSL.Context:
        return self._options.getContext()

    def _currentMtimes(self) -> Tuple[float, ...]:
        out = []
        for path in (self.certPath, self.keyPath, self.clientCAPath, self.crlPath):
            try:
                out.append(os.stat(path).st_mtime if path else 0.0)
            except OSError:
                out.append(-1.0)
        return tuple(out)

    def reloadIfChanged(self) -> bool:
        """
        Reload when any file changed since the last load (a CRL published
        by a cron job, a renewed certificate), and close connections whose
        certificate is now refused; also closes connections whose client
        certificate expired meanwhile.  Never raises (a timer calls it).
        """
        changed = self._currentMtimes() != self._mtimes
        if changed:
            try:
                self.reload()
            except TLSConfigError as e:
                log.error("TLS reload failed, still serving the previous certificate: {error}", error=str(e))
                return False
        else:
            self.closeRefused()
        return changed

    def refusal(self, cert: x509.Certificate) -> Optional[str]:
        """
        Why a client certificate would be refused now (revoked by the
        current CRL, expired, not yet valid, not issued by a current client
        CA), or None.
        """
        now = self._now()
        if _notAfter(cert) < now:
            return "expired"
        try:
            notBefore = cert.not_valid_before_utc
        except AttributeError:  # cryptography < 42
            notBefore = cert.not_valid_before.replace(tzinfo=datetime.timezone.utc)
        if notBefore > now:
            return "not yet valid"
        if self._cas and not any(ca.subject == cert.issuer for ca in self._cas):
            return "not issued by the client CA"
        if self._crl is not None and self._crl.issuer == cert.issuer:
            if self._crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
                return "revoked"
        return None

    def closeRefused(self) -> int:
        """
        Close every established connection whose client certificate would
        be refused now.  Returns how many were closed.
        """
        closed = 0
        for proto in list(self.connections):
            try:
                peer = proto.getPeerCertificate()
            except Exception:
                peer = None
            if peer is None:
                continue
            cert = peer.to_cryptography()
            why = self.refusal(cert)
            if why is None:
                continue
            log.warn(
                "closing connection of {subject}: client certificate {why}",
                subject=cert.subject.rfc4514_string(),
                why=why,
            )
            try:
                proto.abortConnection()
            except Exception:
                log.failure("closing a refused TLS connection failed")
            closed += 1
        return closed


def installReloadOnSIGHUP(tls: Optional[ReloadableServerTLS], reactor: Any, also: Sequence[Any] = ()) -> None:
    """
    Re-read the TLS files when the process gets SIGHUP (rotation without a
    restart; connections whose client certificate is now refused are
    closed), and call each of C{also} (other reloadable secrets).  The
    reload runs on the reactor thread via callFromThread.
    """
    import signal

    def reload() -> None:
        if tls is not None:
            try:
                tls.reload()
            except TLSConfigError as e:
                log.error("TLS reload failed, still serving the previous certificate: {error}", error=str(e))
        for f in also:
            try:
                f()
            except Exception as e:
                log.error("reload on SIGHUP failed: {error}", error=str(e))

    previous = signal.getsignal(signal.SIGHUP)

    def handler(signum: int, frame: Any) -> None:
        later = getattr(reactor, "callFromThread", None)
        if later is not None:
            later(reload)
        else:  # a test clock
            reload()
        if callable(previous) and previous not in (signal.SIG_IGN, signal.SIG_DFL):
            try:
                previous(signum, frame)
            except Exception as e:
                log.error("an earlier SIGHUP handler failed: {error}", error=str(e))

    signal.signal(signal.SIGHUP, handler)


def serverEndpoint(reactor: Any, endpointString: str, tls: Optional[ReloadableServerTLS]) -> Any:
    """
    A listening endpoint: the plain C{tcp:} endpoint, wrapped in TLS when
    C{tls} is given (the C{ssl:} endpoint string cannot require client
    certificates).
    """
    from twisted.internet import endpoints

    plain = endpoints.serverFromString(reactor, endpointString)
    if tls is None:
        return plain
    return _TLSServerEndpoint(plain, tls)


class _TLSServerEndpoint:
    def __init__(self, wrapped: Any, tls: ReloadableServerTLS) -> None:
        self._wrapped = wrapped
        self._tls = tls

    def listen(self, factory: Any) -> Any:
        from twisted.protocols.tls import TLSMemoryBIOFactory

        tls = self._tls

        class Tracking(TLSMemoryBIOFactory):
            def buildProtocol(self, addr: Any) -> Any:
                proto = super().buildProtocol(addr)
                if proto is not None:
                    tls.connections.add(proto)
                return proto

        return self._wrapped.listen(Tracking(self._tls, False, factory))


def clientTLSOptions(hostname: str, caPEM: Optional[bytes], certPEM: Optional[bytes], keyPEM: Optional[bytes]) -> Any:
    """
    Client options that verify the server against C{caPEM} (else the system
    roots) with service-identity hostname checks, presenting a client
    certificate when given.
    """
    kwargs: dict = {}
    if caPEM:
        kwargs["trustRoot"] = ssl.trustRootFromCertificates(
            [ssl.Certificate(crypto.X509.from_cryptography(c)) for c in loadCertificates(caPEM, "CA")]
        )
    if certPEM and keyPEM:
        kwargs["clientCertificate"] = ssl.PrivateCertificate.loadPEM(certPEM + b"\n" + keyPEM)
    return ssl.optionsForClientTLS(hostname, **kwargs)
