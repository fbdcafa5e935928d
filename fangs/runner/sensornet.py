# -*- test-case-name: tests.runner.test_sensor_records -*-
"""
The sensor's network records: connects, datagrams to any address (DNS_QUERY
when they parse as one, else UDP_SEND), and the first writes of each
connection (L{Stream}) reassembled into a TLS ClientHello (SNI), plain-HTTP
requests (HTTP_REQUEST) or DNS over TCP; the run's bait values found in any
of them are CANARY_EXFILTRATED events.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Set, Tuple

import attrs

from fangs.runner import decode
from fangs.runner.sensorrun import RecordHandlers, WatchedRun

_TLS_DEDUP_NS = 5_000_000_000
_STREAM_CAP = 16384
_STREAM_WRITES = 8  # sensor.c STREAM_WRITES
_MAX_STREAMS = 4096


@attrs.define
class Stream:
    """
    The first bytes written on one connection, reassembled.
    """

    family: int
    ip: str
    port: int
    buf: bytearray = attrs.Factory(bytearray)
    writes: int = 0
    kind: str = ""
    reported: bool = False
    canaries: Set[str] = attrs.Factory(set)
    #: plain HTTP: offset of the request being parsed, requests reported, last Host
    offset: int = 0
    requests: Set[int] = attrs.Factory(set)
    host: str = ""


class NetworkRecords(RecordHandlers):
    """
    Handlers of network records (a mixin of L{fangs.runner.sensor.Sensor}).
    """

    _streams: Dict[Tuple[int, int], Stream]
    _tlsSeen: Dict[Tuple[int, str], Tuple[int, str]]

    def _onNet(self, run: WatchedRun, payload: Dict[str, Any]) -> None:
        pid = payload["Header"]["PID"]
        fd = payload["Sockfd"]
        if payload["Family"] in (2, 10):
            self._sockets.setdefault(pid, set()).add(fd)
            self._streams.pop((pid, fd), None)
        self._deliver(run, decode.T_NET, payload)

    def _canary(self, run: WatchedRun, payload: Dict[str, Any], hits: List[str], channel: str, destName: str,
                stream: Optional[Stream] = None) -> None:
        """
        A CANARY_EXFILTRATED event for the bait values C{hits} sent over
        C{channel}; those already reported for C{stream} are not again.
        """
        if stream is not None:
            hits = [h for h in hits if h not in stream.canaries]
            stream.canaries.update(hits)
        if not hits:
            return
        ev = self._derived(
            payload,
            decode.T_CANARY,
            Bait=hits,
            Channel=channel,
            DestIP=payload.get("DestIP", ""),
            DestPort=payload.get("DestPort", 0),
            DestName=destName,
        )
        ev["Header"]["Tags"] = decode.TAGS_CRED
        self._deliver(run, decode.T_CANARY, ev)

    def _onDatagram(self, run: WatchedRun, payload: Dict[str, Any]) -> None:
        data = payload["_data"]
        pid = payload["Header"]["PID"]
        self._sockets.setdefault(pid, set()).add(payload["_fd"])
        dns = decode.dnsPayload(payload["Header"], payload["Family"], payload["DestPort"], payload["DestIP"], data, "udp")
        if dns is not None:
            self._deliverDNS(run, payload, dns)
            return
        ev = self._derived(
            payload,
            decode.T_UDP,
            DestIP=payload["DestIP"],
            DestPort=payload["DestPort"],
            Family=payload["Family"],
            Len=payload["_total"],
            Sockfd=payload["_fd"],
        )
        self._deliver(run, decode.T_UDP, ev)
        if run.canary:
            self._canary(run, payload, run.canary.find(data), "udp", "")

    def _onStream(self, run: WatchedRun, payload: Dict[str, Any]) -> None:
        pid = payload["Header"]["PID"]
        fd = payload["_fd"]
        key = (pid, fd)
        self._sockets.setdefault(pid, set()).add(fd)
        st = self._streams.get(key)
        if st is None or (st.ip, st.port) != (payload["DestIP"], payload["DestPort"]):
            if len(self._streams) >= _MAX_STREAMS:
                self._streams.pop(next(iter(self._streams)))
            st = self._streams[key] = Stream(payload["Family"], payload["DestIP"], payload["DestPort"])
        st.writes += 1
        try:
            self._onStreamBytes(run, payload, st)
        finally:
            if st.writes >= _STREAM_WRITES or (st.kind == "tls" and st.reported):
                # The kernel sends no more of this connection.
                self._streams.pop(key, None)

    def _onStreamBytes(self, run: WatchedRun, payload: Dict[str, Any], st: Stream) -> None:
        room = _STREAM_CAP - len(st.buf)
        if room > 0:
            st.buf += payload["_data"][:room]
        buf = bytes(st.buf)
        if not st.kind:
            if buf[:1] == b"\x16":
                st.kind = "tls"
            elif decode.looksLikeHTTP(buf):
                st.kind = "http"
            elif decode.tcpDNSMessage(buf) is not None:
                st.kind = "dns"
            elif len(buf) >= 16 or st.writes >= _STREAM_WRITES:
                st.kind = "tcp"
        last = st.writes >= _STREAM_WRITES or len(buf) >= _STREAM_CAP
        if st.kind == "tls":
            if not st.reported:
                # The ClientHello may span several writes and several TLS
                # records: joined before parsing.
                hello, complete = decode.joinHandshake(buf)
                if complete or last:
                    st.reported = True
                    self._emitTLS(run, payload, hello)
            return
        if st.kind == "http":
            host = self._httpRequests(run, payload, st, buf, last)
            if run.canary:
                self._canary(run, payload, run.canary.find(buf), "http", host, st)
            return
        if st.kind == "dns":
            if not st.reported:
                msg = decode.tcpDNSMessage(buf)
                if msg is not None:
                    st.reported = True
                    dns = decode.dnsPayload(payload["Header"], st.family, st.port, st.ip, msg, "tcp")
                    if dns is not None:
                        self._deliverDNS(run, payload, dns, st)
            return
        if st.kind == "tcp" and run.canary:
            self._canary(run, payload, run.canary.find(buf), "tcp", "", st)

    def _httpRequests(self, run: WatchedRun, payload: Dict[str, Any], st: Stream, buf: bytes, last: bool) -> str:
        """
        Report each request of the captured bytes of a plain-HTTP connection
        once (keep-alive connections carry several); the last Host seen.
        """
        host = st.host
        while True:
            req = decode.parseHTTPRequest(buf[st.offset :])
            if req is None:
                return host
            method, path, host, headers, end = req
            st.host = host
            if end < 0 and not last:
                return host
            if st.offset not in st.requests:
                st.requests.add(st.offset)
                ev = self._derived(
                    payload,
                    decode.T_HTTP,
                    Method=method,
                    Host=host,
                    Path=path,
                    DestIP=st.ip,
                    DestPort=st.port,
                    Family=st.family,
                )
                self._deliver(run, decode.T_HTTP, ev)
            if end < 0:
                return host
            try:
                length = int(headers.get("content-length", "0") or 0)
            except ValueError:
                return host
            nxt = st.offset + end + max(0, length)
            if nxt >= len(buf) or "chunked" in headers.get("transfer-encoding", ""):
                return host
            st.offset = nxt

    def _deliverDNS(self, run: WatchedRun, payload: Dict[str, Any], dns: Dict[str, Any],
                    stream: Optional[Stream] = None) -> None:
        """
        A DNS query (over UDP, or over TCP on C{stream}), and the bait values
        its name carries.
        """
        dns["CommStr"] = payload["CommStr"]
        self._deliver(run, decode.T_DNS, dns)
        if run.canary:
            self._canary(run, payload, run.canary.findInName(dns["QName"]), "dns", dns["QName"], stream)

    def _emitTLS(self, run: WatchedRun, payload: Dict[str, Any], hello: bytes) -> None:
        try:
            sni = decode.parseClientHelloSNI(hello)
            err = None
        except ValueError:
            if not decode.isClientHello(hello):
                return
            sni, err = "", {}
        ev = self._derived(
            payload,
            decode.T_TLS,
            Source=3,
            SourceName=decode.SOURCE_NAMES[3],
            SniLen=len(sni.encode("utf-8")),
            RawPayloadLen=len(hello),
            SNI=sni,
            ParseErr=err,
            DuplicateOf="",
            Family=payload["Family"],
            DestPort=payload["DestPort"],
            DestIP=payload["DestIP"],
        )
        self._dedupTLS(ev["Header"], ev)
        self._deliver(run, decode.T_TLS, ev)
        if run.canary and sni:
            self._canary(run, payload, run.canary.findInName(sni), "tls", sni)

    def _dedupTLS(self, header: Dict[str, Any], payload: Dict[str, Any]) -> None:
        sni = payload["SNI"]
        if not sni:
            return
        now = header["TsNs"]
        key = (header["PID"], sni)
        seen = self._tlsSeen.get(key)
        if seen is not None and now - seen[0] <= _TLS_DEDUP_NS:
            payload["DuplicateOf"] = seen[1]
            return
        if len(self._tlsSeen) > 4096:
            self._tlsSeen = {k: v for k, v in self._tlsSeen.items() if now - v[0] <= _TLS_DEDUP_NS}
        self._tlsSeen[key] = (now, payload["SourceName"])
