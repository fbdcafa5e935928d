# -*- test-case-name: tests.runner.test_gateway -*-
"""
Where redirected traffic was going: the host's DNAT rules send every packet
that leaves a sandbox to the run's gateway, and these ask the kernel for the
original destination (C{SO_ORIGINAL_DST} for a connection, the connection
tracking table over netlink for a datagram).
"""

from __future__ import annotations

import socket
import struct
from typing import Any, Dict, Optional, Tuple

SO_ORIGINAL_DST = 80


def originalDestination(transport: Any) -> Tuple[str, int]:
    """
    Where the sandbox meant to connect before the host's DNAT rule sent the
    connection here (C{SO_ORIGINAL_DST}); the local address when it was not
    redirected.
    """
    sock = transport.getHandle()
    try:
        raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
        port = struct.unpack("!H", raw[2:4])[0]
        return socket.inet_ntoa(raw[4:8]), port
    except OSError:
        host = transport.getHost()
        return host.host, host.port


def _nla(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * ((4 - length % 4) % 4)


def _nlaParse(data: bytes) -> Dict[int, bytes]:
    out: Dict[int, bytes] = {}
    off = 0
    while off + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, off)
        if length < 4:
            break
        out[kind & 0x3FFF] = data[off + 4:off + length]
        off += (length + 3) & ~3
    return out


def conntrackOriginal(local: Tuple[str, int], peer: Tuple[str, int], proto: int = 17) -> Optional[Tuple[str, int]]:
    """
    Where a datagram (or connection) that reached C{local} from C{peer}
    through the host's DNAT rule was originally sent: asked of the kernel's
    connection tracking over netlink (C{IPCTNL_MSG_CT_GET} by reply tuple).
    C{None} when the kernel does not know it.  Non-blocking in practice:
    the kernel answers a netlink request at once.
    """
    NESTED = 0x8000
    try:
        tupleIP = _nla(1 | NESTED, _nla(1, socket.inet_aton(local[0])) + _nla(2, socket.inet_aton(peer[0])))
        tupleProto = _nla(2 | NESTED, _nla(1, bytes([proto])) + _nla(2, struct.pack("!H", local[1]))
                          + _nla(3, struct.pack("!H", peer[1])))
    except OSError:
        return None
    body = struct.pack("=BBH", socket.AF_INET, 0, 0) + _nla(2 | NESTED, tupleIP + tupleProto)  # CTA_TUPLE_REPLY
    header = struct.pack("=IHHII", 16 + len(body), (1 << 8) | 1, 1, 1, 0)  # CTNETLINK, CT_GET, NLM_F_REQUEST
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12) as sock:  # NETLINK_NETFILTER
            sock.settimeout(0.2)
            sock.send(header + body)
            data = sock.recv(65536)
    except (OSError, AttributeError):
        return None
    if len(data) < 20:
        return None
    msgType = struct.unpack_from("=H", data, 4)[0]
    if msgType == 2:  # NLMSG_ERROR: not tracked
        return None
    attrs_ = _nlaParse(data[20:])
    orig = _nlaParse(attrs_.get(1, b""))  # CTA_TUPLE_ORIG
    ip, pr = _nlaParse(orig.get(1, b"")), _nlaParse(orig.get(2, b""))
    dst, port = ip.get(2), pr.get(3)
    if not dst or len(dst) != 4 or not port or len(port) != 2:
        return None
    return socket.inet_ntoa(dst), struct.unpack("!H", port)[0]
