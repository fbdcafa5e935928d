"""
What the differ fingerprints: categories, fact rows, event types, open flags,
the default credential paths, and severities.
"""

from __future__ import annotations

import enum
from typing import Optional

from fangs.wire import EventType


# Categories

NET_DESTINATION = "net_new_destination"
NET_DNS = "net_new_dns"
NET_HTTPS_HOST = "net_new_https_host"
PROC_EXEC = "proc_new_exec"
FS_READ = "fs_new_path_read"
FS_WRITE = "fs_new_path_write"

NET_HTTP = "net_new_http_host"
NET_UDP = "net_new_udp_destination"
NET_EGRESS = "net_new_egress"
PROC_IO_URING = "proc_io_uring"
PROC_DETACHED = "proc_detached"
CANARY = "canary_exfiltrated"
RUN_UNRESOLVED = "run_unresolved_access"

CATEGORIES = (
    NET_DESTINATION, NET_DNS, NET_HTTPS_HOST, PROC_EXEC, FS_READ, FS_WRITE,
    NET_HTTP, NET_UDP, NET_EGRESS, PROC_IO_URING, PROC_DETACHED, CANARY,
)
FILE_CATEGORIES = frozenset((FS_READ, FS_WRITE))
OUTBOUND_CATEGORIES = frozenset((NET_DESTINATION, NET_DNS, NET_HTTPS_HOST, NET_HTTP, NET_UDP, NET_EGRESS))

#: Bookkeeping rows (never deviations).  C{_network}/C{reached}: network
#: events (count, first id).  C{_named_pid}/C{"<pid>"}: a process that sent a
#: DNS name or SNI.  C{_dest_pid}/C{"<pid> <ip:port>"}: a process connected
#: to a destination.
FACT_NETWORK = "_network"
FACT_EXEC = "_exec"
FACT_EXEC_TS = "_exec_ts"
FACT_FORK = "_fork"
FACT_EXIT = "_exit"
FACT_PPID = "_ppid"
FACT_SOCK = "_sock"
FACT_UNRESOLVED = "_unresolved"
FACT_CATEGORIES = (FACT_NETWORK, FACT_EXEC, FACT_EXEC_TS, FACT_FORK, FACT_EXIT, FACT_PPID, FACT_SOCK, FACT_UNRESOLVED)
#: Separates the pid (and other parts) inside stored row values.
SEP = "\x1f"
_FS = "\x1e"
_NETWORK_VALUE = "reached"

# Event types (ref §1.5) as plain ints for the hot path.
FILE_ACCESS = int(EventType.FILE_ACCESS)
EXEC = int(EventType.EXEC)
NET_CONNECT = int(EventType.NET_CONNECT)
DNS_QUERY = int(EventType.DNS_QUERY)
TLS_SNI = int(EventType.TLS_SNI)
HTTP_REQUEST = int(EventType.HTTP_REQUEST)
UDP_SEND = int(EventType.UDP_SEND)
IO_URING = int(EventType.IO_URING)
CANARY_EXFILTRATED = int(EventType.CANARY_EXFILTRATED)
DETACHED = int(EventType.DETACHED)
UNRESOLVED = int(EventType.UNRESOLVED)
EGRESS_ATTEMPT = int(EventType.EGRESS_ATTEMPT)
PROCESS_FORK = int(EventType.PROCESS_FORK)
PROCESS_EXIT = int(EventType.PROCESS_EXIT)

O_WRONLY = 0o1
O_RDWR = 0o2
O_CREAT = 0o100
O_TRUNC = 0o1000
O_APPEND = 0o2000
WRITE_INTENT = O_WRONLY | O_RDWR | O_CREAT | O_TRUNC | O_APPEND

#: The reference's default cred-tagged watched paths.  Pass the job's own
#: list to L{FingerprintSet} when it has one.
DEFAULT_CRED_PATHS = (
    "/etc/shadow",
    "/etc/passwd",
    "/root/.ssh/",
    "/root/.aws/",
    "/root/.npmrc",
    "/root/.docker/",
    "/root/.kube/",
    "/root/.gnupg/",
    "/proc/self/environ",
)


# ---------------------------------------------------------------------------
# Severity


class Severity(enum.IntEnum):
    LOW = 1
    MEDIUM = 2
    HIGH = 3
    CRITICAL = 4

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, label: str) -> "Severity":
        """
        C{"high"} -> C{Severity.HIGH}; L{ValueError} for anything else.
        """
        try:
            return cls[label.strip().upper()]
        except (KeyError, AttributeError):
            raise ValueError(
                "unknown severity %r (expected low, medium, high or critical)" % (label,)
            ) from None


SEVERITY_LABELS = tuple(s.label for s in Severity)


def severityRank(label: Optional[str]) -> int:
    """
    Rank of a severity label for comparisons and sorting: C{low} = 1 ...
    C{critical} = 4, and 0 for "no severity" (C{None} or C{""}, e.g. a run
    without deviations).  L{ValueError} for any other unknown label.
    """
    if not label:
        return 0
    return int(Severity.parse(label))
