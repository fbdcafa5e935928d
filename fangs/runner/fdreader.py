"""
A reactor reader for a pollable file descriptor that is drained by a
callable: here, a BPF ring buffer map whose fd becomes readable when records
are waiting and whose records BCC's C{ring_buffer_consume()} hands out.  No
thread, no poll loop: the reactor's own epoll wakes us.
"""

from __future__ import annotations

from typing import Callable

from twisted.internet.interfaces import IReadDescriptor
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

log = Logger()


@implementer(IReadDescriptor)
class ConsumingReader:
    """
    Calls C{consume} whenever C{fd} is readable.  C{consume} must not block;
    it is expected to handle (and log) per-record errors itself, and anything
    that still escapes is logged here: C{doRead} always returns C{None}, so
    the reactor never drops the descriptor.
    """

    def __init__(self, fd: int, consume: Callable[[], None], name: str = "ringbuf") -> None:
        self._fd = fd
        self._consume = consume
        self._name = name
        self.reads = 0

    def fileno(self) -> int:
        return self._fd

    def doRead(self) -> None:
        self.reads += 1
        try:
            self._consume()
        except Exception:
            log.failure("draining {name} failed", name=self._name)
        return None

    def connectionLost(self, reason: Failure) -> None:
        log.info("{name} reader removed", name=self._name)

    def logPrefix(self) -> str:
        return self._name
