"""
TLS for FANGS, on Twisted's native pyOpenSSL contexts.

Server side: L{ReloadableServerTLS} builds a C{CertificateOptions} (TLS >= 1.2)
from PEM files, optionally requiring client certificates signed by a CA and
checking a CRL, and can re-read all of them (SIGHUP) without touching
established connections: each new connection takes the current context.

Identity: L{peerIdentity} is the one function that reads a request's client
certificate.  A SAN URI C{fangs://runner/<id>} or C{fangs://operator/<name>}
names the peer; failing that, the subject CN is a runner id.
"""

from __future__ import annotations

import datetime
import os
from typing import Any, List, Optional

import attrs
from cryptography import x509
from cryptography.x509.oid import NameOID
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


@attrs.frozen
class Identity:
    kind: str  # "runner" or "operator"
    name: str
    subject: str

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


def identityOf(cert: x509.Certificate) -> Optional[Identity]:
    """
    The FANGS identity a certificate carries, or None.
    """
    subject = cert.subject.rfc4514_string()
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    for uri in uris:
        for prefix, kind in ((RUNNER_URI, "runner"), (OPERATOR_URI, "operator")):
            if uri.startswith(prefix) and len(uri) > len(prefix):
                return Identity(kind, uri[len(prefix) :], subject)
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if cns and isinstance(cns[0].value, str) and cns[0].value:
        return Identity("runner", cns[0].value, subject)
    return None


def peerIdentity(request: Any) -> Optional[Identity]:
    """
    The identity of the client certificate of C{request}'s connection, or
    None without TLS or without a client certificate.  The one place that
    reads peer certificates.
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
    return identityOf(peer.to_cryptography())


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


def installReloadOnSIGHUP(tls: ReloadableServerTLS, reactor: Any) -> None:
    """
    Re-read the TLS files when the process gets SIGHUP (rotation without a
    restart).  The reload runs on the reactor thread via callFromThread.
    """
    import signal

    def reload() -> None:
        try:
            tls.reload()
        except TLSConfigError as e:
            log.error("TLS reload failed, still serving the previous certificate: {error}", error=str(e))

    previous = signal.getsignal(signal.SIGHUP)

    def handler(signum: int, frame: Any) -> None:
        reactor.callFromThread(reload)
        if callable(previous) and previous not in (signal.SIG_IGN, signal.SIG_DFL):
            previous(signum, frame)

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

        return self._wrapped.listen(TLSMemoryBIOFactory(self._tls, False, factory))


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
