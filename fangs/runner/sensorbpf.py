# -*- test-case-name: tests.runner.test_sensor -*-
"""
The kernel half of the sensor: C{bpf/sensor.c}, the tracepoints its programs
attach to, compiled and verified by BCC on a pool thread.
"""

from __future__ import annotations

import os
import sys
from typing import Any, List, Tuple

from twisted.internet.threads import deferToThreadPool

#: (tracepoint, function, mandatory)
TRACEPOINTS: List[Tuple[str, str, bool]] = [
    ("syscalls:sys_enter_openat", "tp_openat", True),
    ("syscalls:sys_enter_openat2", "tp_openat2", False),
    ("syscalls:sys_enter_open", "tp_open", False),
    ("syscalls:sys_enter_creat", "tp_creat", False),
    ("syscalls:sys_exit_openat", "tp_exit_openat", True),
    ("syscalls:sys_exit_openat2", "tp_exit_openat2", False),
    ("syscalls:sys_exit_open", "tp_exit_open", False),
    ("syscalls:sys_exit_creat", "tp_exit_creat", False),
    ("syscalls:sys_enter_close", "tp_close", True),
    ("syscalls:sys_enter_close_range", "tp_close_range", False),
    ("syscalls:sys_enter_dup", "tp_dup", True),
    ("syscalls:sys_enter_dup2", "tp_dup2", False),
    ("syscalls:sys_enter_dup3", "tp_dup3", True),
    ("syscalls:sys_enter_fcntl", "tp_fcntl", True),
    ("syscalls:sys_exit_dup", "tp_exit_dup", True),
    ("syscalls:sys_exit_dup2", "tp_exit_dup2", False),
    ("syscalls:sys_exit_dup3", "tp_exit_dup3", True),
    ("syscalls:sys_exit_fcntl", "tp_exit_fcntl", True),
    ("syscalls:sys_enter_memfd_create", "tp_memfd", False),
    ("syscalls:sys_exit_memfd_create", "tp_exit_memfd", False),
    ("syscalls:sys_enter_symlink", "tp_symlink", False),
    ("syscalls:sys_enter_symlinkat", "tp_symlinkat", True),
    ("syscalls:sys_enter_link", "tp_link", False),
    ("syscalls:sys_enter_linkat", "tp_linkat", True),
    ("syscalls:sys_enter_rename", "tp_rename", False),
    ("syscalls:sys_enter_renameat", "tp_renameat", False),
    ("syscalls:sys_enter_renameat2", "tp_renameat2", True),
    ("syscalls:sys_exit_symlink", "tp_exit_symlink", False),
    ("syscalls:sys_exit_symlinkat", "tp_exit_symlinkat", True),
    ("syscalls:sys_exit_link", "tp_exit_link", False),
    ("syscalls:sys_exit_linkat", "tp_exit_linkat", True),
    ("syscalls:sys_exit_rename", "tp_exit_rename", False),
    ("syscalls:sys_exit_renameat", "tp_exit_renameat", False),
    ("syscalls:sys_exit_renameat2", "tp_exit_renameat2", True),
    ("syscalls:sys_enter_unlink", "tp_unlink", False),
    ("syscalls:sys_enter_unlinkat", "tp_unlinkat", True),
    ("syscalls:sys_enter_rmdir", "tp_rmdir", False),
    ("syscalls:sys_exit_unlink", "tp_exit_unlink", False),
    ("syscalls:sys_exit_unlinkat", "tp_exit_unlinkat", True),
    ("syscalls:sys_exit_rmdir", "tp_exit_rmdir", False),
    ("syscalls:sys_enter_chdir", "tp_enter_chdir", True),
    ("syscalls:sys_exit_chdir", "tp_exit_chdir", True),
    ("syscalls:sys_enter_fchdir", "tp_enter_fchdir", False),
    ("syscalls:sys_exit_fchdir", "tp_exit_fchdir", False),
    ("syscalls:sys_enter_clone", "tp_clone", False),
    ("syscalls:sys_enter_clone3", "tp_clone3", False),
    ("sched:sched_process_fork", "tp_fork", True),
    ("sched:sched_process_exec", "tp_exec_done", False),
    ("syscalls:sys_enter_exit_group", "tp_exit_group", False),
    ("sched:sched_process_exit", "tp_exit", True),
    ("syscalls:sys_enter_execve", "tp_execve", True),
    ("syscalls:sys_enter_execveat", "tp_execveat", False),
    ("syscalls:sys_exit_io_uring_setup", "tp_exit_io_uring_setup", False),
    ("syscalls:sys_enter_socket", "tp_socket", True),
    ("syscalls:sys_exit_socket", "tp_exit_socket", True),
    ("syscalls:sys_enter_connect", "tp_connect", True),
    ("syscalls:sys_enter_write", "tp_write", True),
    ("syscalls:sys_enter_writev", "tp_writev", False),
    ("syscalls:sys_enter_sendto", "tp_sendto", True),
    ("syscalls:sys_enter_sendmsg", "tp_sendmsg", True),
    ("syscalls:sys_enter_sendmmsg", "tp_sendmmsg", False),
]



def defaultSourcePath() -> str:
    """
    C{bpf/sensor.c} of the source tree this package sits in, else the copy
    installed under C{<prefix>/share/fangs/bpf}.
    """
    here = os.path.dirname(os.path.abspath(__file__))
    repo = os.path.join(os.path.dirname(os.path.dirname(here)), "bpf", "sensor.c")
    if os.path.exists(repo):
        return repo
    return os.path.join(sys.prefix, "share", "fangs", "bpf", "sensor.c")


def _thd_compile(sourcePath: str, cflags: List[str], functions: List[str]) -> Any:
    """
    Compile and verify every program (seconds of CPU): runs on a pool thread.
    """
    from bcc import BPF

    bpf = BPF(src_file=sourcePath.encode(), cflags=cflags)
    try:
        for name in functions:
            bpf.load_func(name.encode(), BPF.TRACEPOINT)
    except BaseException:
        bpf.cleanup()
        raise
    return bpf


async def load(reactor: Any, sourcePath: str, ringbufPages: int) -> Tuple[Any, int]:
    """
    Compile C{sourcePath} with a ring buffer of C{ringbufPages} pages and
    attach every program to its tracepoint: the BCC object and how many
    tracepoints it is attached to.  Optional tracepoints this kernel lacks
    are skipped; a missing mandatory one is an error.
    """
    from bcc import BPF

    wanted = [(tp, fn, must) for tp, fn, must in TRACEPOINTS if BPF.tracepoint_exists(*tp.split(":"))]
    for tp, fn, must in TRACEPOINTS:
        if must and (tp, fn, must) not in wanted:
            raise RuntimeError("mandatory tracepoint %s is missing" % (tp,))
    cflags = ["-DRINGBUF_PAGES=%d" % (ringbufPages,), "-Wno-unused-value", "-Wno-pointer-sign"]
    bpf = await deferToThreadPool(
        reactor, reactor.getThreadPool(), _thd_compile, sourcePath, cflags, [fn for _tp, fn, _m in wanted]
    )
    try:
        for tp, fn, _must in wanted:
            bpf.attach_tracepoint(tp=tp.encode(), fn_name=fn.encode())
    except BaseException:
        bpf.cleanup()
        raise
    return bpf, len(wanted)
