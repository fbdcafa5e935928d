"""
Pure decoding for the eBPF sensor: ring buffer records to payload dicts, DNS
and TLS ClientHello parsers, path canonicalisation and per-run watched-prefix
matching.  Nothing here imports Twisted or BCC.

The record layout mirrors C{bpf/sensor.c} (little-endian x86-64); the payload
dicts follow the Go reference's JSON shape (PascalCase keys, a C{Header}
object, C{CommStr}, raw byte arrays left out).  Keys starting with C{_} are
for the sensor's own use and are removed before a payload is delivered.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

# Record types: 1..14 are fangs.wire.EventType; the others stay inside the sensor.
T_FILE = 1
T_EXEC = 2
T_NET = 3
T_DNS = 4
T_TLS = 5
T_HTTP = 6
T_UDP = 7
T_IOURING = 8
T_CANARY = 9
T_UNRESOLVED = 11
T_FORK = 13
T_EXIT = 14
T_CHDIR = 100
T_FCHDIR = 103
T_CLOSE = 105
T_DUP = 106
T_LINK = 107
T_MEMFD = 108
T_DGRAM = 109
T_STREAM = 110
T_EXECDONE = 111
T_UNLINK = 112

#: Record types that are events of their own once decoded (others are the
#: sensor's bookkeeping, or become events only after userspace work).
INTERNAL = frozenset({T_CHDIR, T_FCHDIR, T_CLOSE, T_DUP, T_LINK, T_MEMFD, T_EXECDONE})

# File record `resolve` flags (sensor.c RESOLVE_*).
RESOLVE_NEEDED = 1
RESOLVE_UNREADABLE = 2
RESOLVE_LINKED = 4
RESOLVE_DIR = 8

# Link record kinds.
L_SYMLINK = 1
L_HARDLINK = 2
L_RENAME = 3
LINK_KINDS = {L_SYMLINK: "symlink", L_HARDLINK: "hardlink", L_RENAME: "rename"}

TAG_INTERESTING = 1
TAG_CRED_ACCESS = 2
TAGS_CRED = TAG_INTERESTING | TAG_CRED_ACCESS

AT_FDCWD = -100
#: open(2) flags that mean the caller may modify the file.
WRITE_FLAGS = 0o1 | 0o2 | 0o100 | 0o1000 | 0o2000  # O_WRONLY|O_RDWR|O_CREAT|O_TRUNC|O_APPEND

#: Bytes of path the kernel compares in its LPM trie (sensor.c LPM_CAP).
LPM_CAP = 248
PATH_CAP = 4096
LINK_CAP = 2048

SOURCE_NAMES = {1: "libssl", 2: "node_internal", 3: "tcp_clienthello"}

_HDR = struct.Struct("<QQ16sIIIIII16sBBHI")
HEADER_SIZE = _HDR.size  # 80
_FILE = struct.Struct("<iiiHBB")  # at 80; lpm key 8 bytes; path at 104
FILE_FIXED = 104
_LINK = struct.Struct("<iiiHHBBHI")  # at 80; old at 104, new at 104 + LINK_CAP
LINK_FIXED = 104
LINK_SIZE = LINK_FIXED + 2 * LINK_CAP
_EXEC = struct.Struct("<BBHi")  # at 80
_ANC = struct.Struct("<II16s")  # 5 of them at 88
_ARGLEN = struct.Struct("<16H")  # at 208
EXEC_BIN = 240
EXEC_ARGV = 496
ARG_CAP = 128
EXEC_SIZE = 2544
_NET = struct.Struct("<HHI16sBBH108s")  # at 80
NET_SIZE = 216
_DATA = struct.Struct("<HHI16sHBBI")  # at 80; data at 112
DATA_FIXED = 112
_SMALL = struct.Struct("<iiii")  # at 80
SMALL_SIZE = 96

SOCK_STREAM = 1
SOCK_DGRAM = 2

assert HEADER_SIZE == 80 and _DATA.size == 32 and _NET.size == 136 and _LINK.size == 24


class DecodeError(ValueError):
    """
    A record too short for its type, or of an unknown type.
    """


def cstring(raw: bytes) -> bytes:
    end = raw.find(b"\0")
    return raw if end < 0 else raw[:end]


def text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def formatIP(family: int, addr: bytes) -> str:
    """
    Like Go's C{net.IP.String()}: dotted quad, compressed IPv6 without
    brackets, IPv4-mapped IPv6 as a dotted quad.
    """
    if family == 2:
        return str(ipaddress.IPv4Address(addr[:4]))
    if family == 10:
        ip = ipaddress.IPv6Address(addr[:16])
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ip)
    return ""


def unixPath(raw: bytes) -> str:
    """
    A sockaddr_un's sun_path: a filesystem path, or C{@name} for the
    abstract namespace.
    """
    if raw[:1] == b"\0":
        return "@" + text(raw[1:].rstrip(b"\0"))
    return text(cstring(raw))


def decodeRecord(data: bytes) -> Tuple[int, Dict[str, Any]]:
    """
    Turn one ring buffer record into C{(type, payload)}.

    Every record carries C{_slot} and C{_run}.  File-like records carry
    C{_path} (raw bytes) and C{_resolve} (L{RESOLVE_NEEDED} etc.); link
    records C{_old}/C{_new}; data records C{_data}; small records their
    numbers.  Raises L{DecodeError} for short or unknown records.
    """
    if len(data) < HEADER_SIZE:
        raise DecodeError("record of %d bytes is shorter than the header" % (len(data),))
    ts, cgid, runID, pid, tid, ppid, uid, gid, slot, comm, rtype, tags, _p0, _p1 = _HDR.unpack_from(data)
    header = {
        "TsNs": ts,
        "CgroupID": cgid,
        "RunID": list(runID),
        "PID": pid,
        "TID": tid,
        "PPID": ppid,
        "UID": uid,
        "GID": gid,
        "Type": rtype,
        "Tags": tags,
    }
    payload: Dict[str, Any] = {"Header": header, "_slot": slot, "_run": runID}
    if rtype in (T_FILE, T_CHDIR, T_MEMFD, T_UNLINK):
        if len(data) < FILE_FIXED:
            raise DecodeError("file record of %d bytes" % (len(data),))
        dfd, flags, ret, pathLen, truncated, resolve = _FILE.unpack_from(data, HEADER_SIZE)
        path = data[FILE_FIXED : FILE_FIXED + pathLen]
        payload["DFD"] = dfd
        payload["Flags"] = flags
        payload["Ret"] = ret
        payload["PathLen"] = pathLen
        payload["Truncated"] = truncated
        payload["_path"] = path
        payload["_resolve"] = resolve
    elif rtype == T_LINK:
        if len(data) < LINK_SIZE:
            raise DecodeError("link record of %d bytes" % (len(data),))
        olddfd, newdfd, ret, oldLen, newLen, kind, truncated, _pad, _pad2 = _LINK.unpack_from(data, HEADER_SIZE)
        payload["_kind"] = kind
        payload["_olddfd"] = olddfd
        payload["_newdfd"] = newdfd
        payload["_old"] = data[LINK_FIXED : LINK_FIXED + min(oldLen, LINK_CAP - 1)]
        payload["_new"] = data[LINK_FIXED + LINK_CAP : LINK_FIXED + LINK_CAP + min(newLen, LINK_CAP - 1)]
        payload["_truncated"] = bool(truncated)
    elif rtype == T_EXEC:
        if len(data) < EXEC_SIZE:
            raise DecodeError("exec record of %d bytes" % (len(data),))
        argc, argvTruncated, binLen, dfd = _EXEC.unpack_from(data, HEADER_SIZE)
        argLens = _ARGLEN.unpack_from(data, 208)
        argv = []
        for i in range(min(argc, 16)):
            off = EXEC_ARGV + i * ARG_CAP
            argv.append(text(data[off : off + min(argLens[i], ARG_CAP - 1)]))
        ancestors = []
        ancestorComms = []
        chainEnded = False
        for i in range(5):
            apid, appid, acomm = _ANC.unpack_from(data, 88 + i * 24)
            ancestors.append({"PID": apid, "PPID": appid, "Comm": list(acomm)})
            if apid == 0:
                chainEnded = True
            if not chainEnded:
                ancestorComms.append(text(cstring(acomm)))
        payload["Argc"] = argc
        payload["ArgvTruncated"] = argvTruncated & 1
        payload["_unreadable"] = bool(argvTruncated & 2)
        payload["DFD"] = dfd
        payload["BinaryPathStr"] = text(data[EXEC_BIN : EXEC_BIN + min(binLen, 255)])
        payload["ArgvStrs"] = argv
        payload["Ancestors"] = ancestors
        payload["AncestorComms"] = ancestorComms
        payload["_bin"] = data[EXEC_BIN : EXEC_BIN + min(binLen, 255)]
    elif rtype == T_NET:
        if len(data) < NET_SIZE:
            raise DecodeError("net record of %d bytes" % (len(data),))
        family, port, fd, addr, fastopen, stype, pathLen, path = _NET.unpack_from(data, HEADER_SIZE)
        payload["Family"] = family
        payload["Source"] = 1
        payload["DestPort"] = port
        payload["Sockfd"] = fd
        payload["DestIP"] = formatIP(family, addr)
        if fastopen:
            payload["FastOpen"] = True
        if stype:
            payload["SockType"] = {SOCK_STREAM: "stream", SOCK_DGRAM: "dgram"}.get(stype, str(stype))
        if family == 1:
            payload["UnixPath"] = unixPath(path[: min(pathLen, 108)])
    elif rtype in (T_DGRAM, T_STREAM):
        if len(data) < DATA_FIXED:
            raise DecodeError("data record of %d bytes" % (len(data),))
        family, port, fd, addr, dataLen, stype, syscall, totalLen = _DATA.unpack_from(data, HEADER_SIZE)
        payload["Family"] = family
        payload["DestPort"] = port
        payload["DestIP"] = formatIP(family, addr)
        payload["_fd"] = fd
        payload["_stype"] = stype
        payload["_syscall"] = syscall
        payload["_total"] = totalLen
        payload["_data"] = data[DATA_FIXED : DATA_FIXED + dataLen]
    elif rtype in (T_FORK, T_EXIT, T_CLOSE, T_DUP, T_FCHDIR, T_IOURING, T_EXECDONE):
        if len(data) < SMALL_SIZE:
            raise DecodeError("record of type %d with %d bytes" % (rtype, len(data)))
        a, b, c, _d = _SMALL.unpack_from(data, HEADER_SIZE)
        if rtype == T_FORK:
            payload["ChildPID"] = a
        elif rtype == T_EXIT:
            payload["ExitCode"] = a if b else None
        elif rtype == T_IOURING:
            payload["Refused"] = a < 0
            payload["Errno"] = -a if a < 0 else 0
            payload["Ret"] = a
        else:
            payload["_a"] = a
            payload["_b"] = b
            payload["_c"] = c
    else:
        raise DecodeError("unknown record type %d" % (rtype,))
    payload["CommStr"] = text(cstring(comm))
    return rtype, payload


def dnsPayload(header: Dict[str, Any], family: int, port: int, ip: str, msg: bytes, transport: str) -> Optional[Dict[str, Any]]:
    """
    A DNS_QUERY payload when C{msg} parses as a DNS query, else C{None}.
    """
    try:
        qname, qtype = parseDNSQuestion(msg)
    except ValueError:
        return None
    if len(msg) >= 3 and msg[2] & 0x80:
        return None  # a response, not a query
    return {
        "Header": dict(header, Type=T_DNS),
        "Family": family,
        "DestPort": port,
        "QueryLen": len(msg),
        "ParseErr": None,
        "QName": qname,
        "QType": qtype,
        "DestIP": ip,
        "Transport": transport,
    }


def tcpDNSMessage(stream: bytes) -> Optional[bytes]:
    """
    The first DNS message of a DNS-over-TCP stream (2-byte length prefix),
    when the stream holds all of it and it parses as a query.
    """
    if len(stream) < 14:
        return None
    n = int.from_bytes(stream[:2], "big")
    if n < 12 or len(stream) < 2 + n:
        return None
    msg = stream[2 : 2 + n]
    try:
        parseDNSQuestion(msg)
    except ValueError:
        return None
    return msg


HTTP_METHODS = (b"GET", b"POST", b"PUT", b"PATCH", b"DELETE", b"HEAD", b"OPTIONS", b"CONNECT", b"TRACE")


def looksLikeHTTP(data: bytes) -> bool:
    sp = data.find(b" ", 0, 9)
    return sp > 0 and data[:sp] in HTTP_METHODS


def parseHTTPRequest(data: bytes) -> Optional[Tuple[str, str, str, Dict[str, str], int]]:
    """
    C{(method, path, host, headers, header_end)} of a plain-HTTP request at
    the start of C{data}, once its request line is complete; C{header_end}
    is the offset of the body (or -1 while the headers are incomplete).
    """
    if not looksLikeHTTP(data):
        return None
    eol = data.find(b"\r\n")
    if eol < 0:
        eol = data.find(b"\n")
        if eol < 0:
            return None
    parts = data[:eol].split(b" ")
    if len(parts) < 3 or not parts[-1].startswith(b"HTTP/"):
        return None
    method, path = text(parts[0]), text(b" ".join(parts[1:-1]))
    end = data.find(b"\r\n\r\n")
    headerEnd = end + 4 if end >= 0 else -1
    headers: Dict[str, str] = {}
    for line in data[eol:end if end >= 0 else len(data)].split(b"\n"):
        line = line.strip(b"\r")
        if b":" in line:
            k, v = line.split(b":", 1)
            headers[text(k.strip()).lower()] = text(v.strip())
    return method, path, headers.get("host", ""), headers, headerEnd


# ---------------------------------------------------------------------------
# DNS


def parseDNSQuestion(msg: bytes) -> Tuple[str, int]:
    """
    The first question of a DNS message: C{(name, qtype)}.  Raises
    L{ValueError} on anything malformed (short header, no question, label
    over 63 bytes, compression pointer, overrun, missing type/class).
    """
    if len(msg) < 12:
        raise ValueError("DNS message shorter than its header")
    qdcount = int.from_bytes(msg[4:6], "big")
    if qdcount == 0:
        raise ValueError("DNS message has no question")
    labels: List[bytes] = []
    off = 12
    while True:
        if off >= len(msg):
            raise ValueError("DNS name overruns the message")
        n = msg[off]
        off += 1
        if n == 0:
            break
        if n & 0xC0:
            raise ValueError("compression pointer or reserved label type in question")
        if n > 63:
            raise ValueError("DNS label longer than 63 bytes")
        if off + n > len(msg):
            raise ValueError("DNS label overruns the message")
        labels.append(msg[off : off + n])
        off += n
    if off + 4 > len(msg):
        raise ValueError("DNS question has no type and class")
    qtype = int.from_bytes(msg[off : off + 2], "big")
    return text(b".".join(labels)), qtype


# ---------------------------------------------------------------------------
# TLS


def isClientHello(data: bytes) -> bool:
    return len(data) >= 6 and data[0] == 0x16 and data[1] == 0x03 and data[5] == 0x01


def joinHandshake(data: bytes) -> Tuple[bytes, bool]:
    """
    The TLS records at the start of C{data} with the handshake messages of
    consecutive handshake records joined into one record (a ClientHello
    fragmented over several records, as DPI evasion does), and whether the
    first handshake message is complete.
    """
    out = bytearray()
    off = 0
    while off + 5 <= len(data) and data[off] == 0x16 and data[off + 1] == 0x03:
        n = int.from_bytes(data[off + 3 : off + 5], "big")
        out += data[off + 5 : off + 5 + n]
        off += 5 + n
        if len(out) >= 4 and len(out) >= 4 + int.from_bytes(out[1:4], "big"):
            break
    complete = len(out) >= 4 and len(out) >= 4 + int.from_bytes(out[1:4], "big")
    if not out:
        return data, False
    return data[:3] + min(len(out), 0xFFFF).to_bytes(2, "big") + bytes(out), complete


def parseClientHelloSNI(data: bytes) -> str:
    """
    The host_name of the server_name extension in a TLS record holding a
    ClientHello (possibly cut short after the extension).  Raises
    L{ValueError} when there is none or the bytes are malformed.
    """
    if len(data) < 43:
        raise ValueError("too short for a ClientHello")
    if data[0] != 0x16:
        raise ValueError("not a handshake record")
    if data[1] != 0x03:
        raise ValueError("not a TLS record version")
    if data[5] != 0x01:
        raise ValueError("not a ClientHello")
    off = 5 + 4 + 2 + 32  # record header, handshake header, client_version, random

    def need(n: int) -> None:
        if off + n > len(data):
            raise ValueError("ClientHello truncated")

    need(1)
    off += 1 + data[off]  # session id
    need(2)
    off += 2 + int.from_bytes(data[off : off + 2], "big")  # cipher suites
    need(1)
    off += 1 + data[off]  # compression methods
    need(2)
    extEnd = min(len(data), off + 2 + int.from_bytes(data[off : off + 2], "big"))
    off += 2
    while off + 4 <= extEnd:
        extType = int.from_bytes(data[off : off + 2], "big")
        extLen = int.from_bytes(data[off + 2 : off + 4], "big")
        off += 4
        if extType == 0:
            ext = data[off : min(off + extLen, extEnd)]
            if len(ext) < 5:
                raise ValueError("server_name extension truncated")
            if ext[2] != 0:
                raise ValueError("server_name is not a host_name")
            nameLen = int.from_bytes(ext[3:5], "big")
            if 5 + nameLen > len(ext):
                raise ValueError("server_name truncated")
            return text(ext[5 : 5 + nameLen])
        off += extLen
    raise ValueError("no server_name extension")


# ---------------------------------------------------------------------------
# Paths


def canonicalPath(path: bytes, base: Optional[bytes] = None) -> bytes:
    """
    Lexically canonical absolute path: C{path} joined to C{base} when it is
    relative, C{.} and empty segments dropped, C{..} applied (never above
    C{/}).  Symbolic links are not followed.
    """
    if not path.startswith(b"/"):
        if base is None:
            raise ValueError("relative path without a base")
        path = base + b"/" + path
    out: List[bytes] = []
    for seg in path.split(b"/"):
        if seg == b"" or seg == b".":
            continue
        if seg == b"..":
            if out:
                out.pop()
            continue
        out.append(seg)
    return b"/" + b"/".join(out)


def _patterns(prefix: bytes) -> List[Tuple[bytes, bool]]:
    """
    The (pattern, exact) pairs a watched prefix stands for.  A prefix ending
    in C{/} is a directory: everything under it, and the directory itself.  A
    prefix without one names a file or a directory: itself exactly, or
    anything under it after a C{/} (so C{/etc/passwd} never matches
    C{/etc/passwd-}).
    """
    if prefix.endswith(b"/"):
        pats = [(prefix, False)]
        if len(prefix) > 1:
            pats.append((prefix.rstrip(b"/") or b"/", True))
        return pats
    return [(prefix, True), (prefix + b"/", False)]


def kernelEntries(watched: Iterable[Tuple[str, bool]]) -> Dict[bytes, int]:
    """
    LPM trie entries for one run: key bytes (at most L{LPM_CAP}; exact
    patterns end in a NUL) to tags.  Over-long patterns are cut, so the kernel
    may pass up a few paths that userspace then rejects.
    """
    out: Dict[bytes, int] = {}
    for prefix, cred in watched:
        for pat, exact in _patterns(prefix.encode("utf-8")):
            key = (pat + b"\0" if exact else pat)[:LPM_CAP]
            out[key] = out.get(key, 0) | (TAGS_CRED if cred else 0)
    return out


class PrefixMatcher:
    """
    A run's watched prefixes, matched the way the kernel's LPM trie does
    (longest pattern wins, an exact pattern counting its NUL), on the full
    canonical path.
    """

    def __init__(self, watched: Iterable[Tuple[str, bool]]) -> None:
        merged: Dict[Tuple[bytes, bool], int] = {}
        for prefix, cred in watched:
            for pat, exact in _patterns(prefix.encode("utf-8")):
                merged[(pat, exact)] = merged.get((pat, exact), 0) | (TAGS_CRED if cred else 0)
        self._exact: Dict[bytes, int] = {}
        prefixes: List[Tuple[int, bytes, int]] = []
        for (pat, exact), tags in merged.items():
            if exact:
                self._exact[pat] = tags
            else:
                prefixes.append((len(pat), pat, tags))
        prefixes.sort(reverse=True)
        self._prefixes = prefixes

    def match(self, path: bytes) -> Optional[int]:
        """
        The tags of the longest matching pattern, or C{None} when the path is
        not watched.
        """
        # An exact pattern counts its NUL, so it is longer than any prefix
        # pattern that can match the same path: it always wins.
        exact = self._exact.get(path)
        if exact is not None:
            return exact
        for _length, pat, tags in self._prefixes:
            if path.startswith(pat):
                return tags
        return None


def watchedTuples(watched: Sequence[Any]) -> List[Tuple[str, bool]]:
    """
    C{(prefix, cred_tagged)} pairs from L{fangs.wire.WatchedPath}-like
    objects, keeping only absolute prefixes.
    """
    return [(w.prefix, bool(w.cred_tagged)) for w in watched if w.prefix.startswith("/")]
