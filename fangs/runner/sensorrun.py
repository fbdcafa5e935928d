# -*- test-case-name: tests.runner.test_sensor_records -*-
"""
What the sensor's record handlers share: the state of one watched run
(L{WatchedRun}) and L{RecordHandlers}, the base of the handler mixins
(L{fangs.runner.sensorfiles}, L{fangs.runner.sensornet},
L{fangs.runner.sensorprocs}) that L{fangs.runner.sensor.Sensor} combines:
the sensor's shared state, declared, and how an event reaches a run's sink.
"""

from __future__ import annotations

import collections
from typing import Any, Callable, Dict, List, Set, Tuple

import attrs

from fangs.runner import decode
from fangs.runner.canary import CanaryMatcher
from fangs.runner.resolver import ProcFS, Resolver, RunPaths
from fangs.wire import RunID

Sink = Callable[[int, Dict[str, Any]], None]


@attrs.define
class WatchedRun:
    """
    One run the sensor watches: its kernel slot, watched prefixes, sink and
    bait values, and what was seen of its processes.
    """

    runID: RunID
    cgroupID: int
    slot: int
    matcher: decode.PrefixMatcher
    lpmKeys: List[bytes]
    sink: Sink
    canary: CanaryMatcher
    paths: RunPaths = attrs.Factory(RunPaths)
    outside: bool = False
    delivered: int = 0
    unresolved: int = 0
    consumed: int = 0
    #: every tgid seen in this run's records (bounded), for fanotify events
    seen: "collections.OrderedDict[int, str]" = attrs.Factory(collections.OrderedDict)
    bait: Any = None


class RecordHandlers:
    """
    The state every record handler reads, set up by
    L{fangs.runner.sensor.Sensor}, and the delivery they share.  Every method
    runs on the reactor thread.
    """

    _reactor: Any
    _tables: Dict[str, Any]
    _runs: Dict[RunID, WatchedRun]
    _resolver: Resolver
    _procfs: ProcFS
    #: (tgid, fd) -> the first bytes written on that connection
    _streams: Dict[Tuple[int, int], Any]
    #: tgid -> socket fds the kernel's maps may hold for it
    _sockets: Dict[int, Set[int]]
    _pendingExec: Dict[int, Tuple[WatchedRun, Dict[str, Any]]]
    _consuming: bool
    _now: Callable[[], int]
    _cgroupRoot: str
    stats: Dict[str, int]
    #: take the records waiting in the ring buffer now
    _drain: Callable[[], None]

    def _deliver(self, run: WatchedRun, rtype: int, payload: Dict[str, Any]) -> None:
        for k in [k for k in payload if k.startswith("_")]:
            del payload[k]
        payload["Header"]["Type"] = rtype
        run.delivered += 1
        run.sink(rtype, payload)

    def _derived(self, payload: Dict[str, Any], rtype: int, **fields: Any) -> Dict[str, Any]:
        out: Dict[str, Any] = {"Header": dict(payload["Header"], Type=rtype, Tags=0)}
        out.update(fields)
        out["CommStr"] = payload["CommStr"]
        return out

    def _unresolved(self, run: WatchedRun, payload: Dict[str, Any], raw: bytes, reason: str, harmless: bool = False) -> None:
        """
        Report an access that could not be resolved, with the raw string;
        counted (L{fangs.runner.sensor.Sensor.unresolvedFor}) unless it
        provably is harmless.
        """
        if harmless:
            self.stats["unresolved_harmless"] += 1
        else:
            run.unresolved += 1
            self.stats["unresolved"] += 1
        ev = self._derived(
            payload,
            decode.T_UNRESOLVED,
            RawPath=decode.text(raw),
            DFD=payload.get("DFD", decode.AT_FDCWD),
            Reason=reason,
            Flags=payload.get("Flags", 0),
            Ret=payload.get("Ret", 0),
            Harmless=harmless,
        )
        self._deliver(run, decode.T_UNRESOLVED, ev)
