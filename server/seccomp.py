"""A seccomp allow-list for emulator workers, as a classic BPF program built here.

An emulated kernel is native code in the worker process, so what the process may ask of the
kernel is what a tenant may ask. The filter allows what the worker needs once it has started
(memory, files it may open, its sockets, threads, time, signals to itself) and answers
everything else with EPERM: no execve/execveat, fork or vfork (clone only with CLONE_THREAD),
no ptrace, process_vm_readv/writev, kill/tgkill to any other process, no mount, bpf,
perf_event_open, keyctl, io_uring, unshare/setns, no new sockets (no socket, connect,
accept: a worker uses the ones it inherited or was handed), and only a few
harmless ioctl and prctl requests (no TIOCSTI, no PR_SET_DUMPABLE).

Why not a library: libseccomp's Python bindings (Debian's ``python3-seccomp``) exist for the
system interpreter only, and ``pyseccomp`` on PyPI (ctypes over libseccomp) has had no release
since 2021. The program is small and fixed, so it is written out here (x86-64 only; on other
machines :func:`unsupported` says why and the daemon treats confinement as unavailable).
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct

# <linux/filter.h>, <linux/seccomp.h>, <linux/audit.h>
_LD_W_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
_JEQ = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
_JGE = 0x35  # BPF_JMP | BPF_JGE | BPF_K
_JSET = 0x45  # BPF_JMP | BPF_JSET | BPF_K
_RET = 0x06  # BPF_RET | BPF_K
_RET_KILL_PROCESS = 0x80000000
_RET_ERRNO = 0x00050000
_RET_ALLOW = 0x7FFF0000
_AUDIT_ARCH_X86_64 = 0xC000003E
_X32_BIT = 0x40000000
_SECCOMP_SET_MODE_FILTER = 1
_SECCOMP_FILTER_FLAG_TSYNC = 1
_NR_SECCOMP = 317
_PR_SET_NO_NEW_PRIVS = 38

_DENY = _RET_ERRNO | errno.EPERM
_NO_SYSCALL = _RET_ERRNO | errno.ENOSYS  # clone3: glibc then falls back to clone

# x86-64 numbers (<asm/unistd_64.h>) of the system calls a worker may make freely.
_ALLOWED = {
    "read": 0, "write": 1, "open": 2, "close": 3, "stat": 4, "fstat": 5, "lstat": 6,
    "poll": 7, "lseek": 8, "mmap": 9, "mprotect": 10, "munmap": 11, "brk": 12,
    "rt_sigaction": 13, "rt_sigprocmask": 14, "rt_sigreturn": 15, "pread64": 17,
    "pwrite64": 18, "readv": 19, "writev": 20, "access": 21, "pipe": 22, "select": 23,
    "sched_yield": 24, "mremap": 25, "msync": 26, "mincore": 27, "madvise": 28, "dup": 32,
    "dup2": 33, "pause": 34, "nanosleep": 35, "getitimer": 36, "alarm": 37, "setitimer": 38,
    "getpid": 39, "sendfile": 40, "sendto": 44, "recvfrom": 45,
    "sendmsg": 46, "recvmsg": 47, "shutdown": 48, "getsockname": 51, "getpeername": 52,
    "socketpair": 53, "setsockopt": 54, "getsockopt": 55, "exit": 60, "wait4": 61,
    "uname": 63, "fcntl": 72, "flock": 73, "fsync": 74, "fdatasync": 75, "ftruncate": 77,
    "getdents": 78, "getcwd": 79, "chdir": 80, "fchdir": 81, "rename": 82, "mkdir": 83,
    "rmdir": 84, "unlink": 87, "readlink": 89, "chmod": 90, "fchmod": 91, "umask": 95,
    "gettimeofday": 96, "getrlimit": 97, "getrusage": 98, "sysinfo": 99, "times": 100,
    "getuid": 102, "getgid": 104, "geteuid": 107, "getegid": 108, "getppid": 110,
    "getpgrp": 111, "getgroups": 115, "getresuid": 118, "getresgid": 120, "getpgid": 121,
    "getsid": 124, "rt_sigtimedwait": 128, "rt_sigsuspend": 130, "sigaltstack": 131,
    "statfs": 137, "fstatfs": 138, "getpriority": 140, "sched_getparam": 143,
    "sched_getscheduler": 145, "sched_get_priority_max": 146, "sched_get_priority_min": 147,
    "mlock": 149, "munlock": 150, "arch_prctl": 158, "gettid": 186, "getxattr": 191,
    "lgetxattr": 192, "fgetxattr": 193, "time": 201, "futex": 202, "sched_setaffinity": 203,
    "sched_getaffinity": 204, "getdents64": 217, "set_tid_address": 218,
    "restart_syscall": 219, "fadvise64": 221, "timer_create": 222, "timer_settime": 223,
    "timer_gettime": 224, "timer_delete": 226, "clock_gettime": 228, "clock_getres": 229,
    "clock_nanosleep": 230, "exit_group": 231, "epoll_wait": 232, "epoll_ctl": 233,
    "get_mempolicy": 239, "openat": 257, "mkdirat": 258, "newfstatat": 262, "unlinkat": 263,
    "renameat": 264, "readlinkat": 267, "fchmodat": 268, "faccessat": 269, "pselect6": 270,
    "ppoll": 271, "set_robust_list": 273, "get_robust_list": 274, "epoll_pwait": 281,
    "fallocate": 285, "eventfd2": 290, "epoll_create1": 291, "dup3": 292,
    "pipe2": 293, "recvmmsg": 299, "prlimit64": 302, "sendmmsg": 307, "getcpu": 309,
    "sched_getattr": 315, "renameat2": 316, "getrandom": 318, "memfd_create": 319,
    "membarrier": 324, "mlock2": 325, "copy_file_range": 326, "statx": 332, "rseq": 334,
    "close_range": 436, "faccessat2": 439, "epoll_pwait2": 441,
}  # fmt: skip
# Allowed with their arguments checked (tkill names a thread, not a process, and stays out:
# glibc signals its own threads with tgkill).
_IOCTL, _CLONE, _KILL, _PRCTL, _TGKILL, _CLONE3 = 16, 56, 62, 157, 234, 435
_CLONE_THREAD = 0x00010000
# TCGETS (isatty), FIONREAD, FIONBIO, FIONCLEX, FIOCLEX: what Python and its sockets ask.
_IOCTLS = (0x5401, 0x541B, 0x5421, 0x5450, 0x5451)
# PR_SET_PDEATHSIG, PR_GET_DUMPABLE, PR_SET_NAME, PR_GET_NAME, PR_GET_SECCOMP,
# PR_CAPBSET_READ, PR_GET_NO_NEW_PRIVS, PR_SET_VMA (glibc names its mappings).
_PRCTLS = (1, 3, 15, 16, 21, 23, 39, 0x53564D41)


def unsupported() -> str | None:
    """Why this machine cannot install the filter; None when it can."""
    if platform.system() != "Linux":
        return f"seccomp is Linux's ({platform.system()} here)"
    if platform.machine() != "x86_64":
        return f"the worker's seccomp filter is written for x86-64, not {platform.machine()}"
    try:
        with open("/proc/self/status") as status:
            if not any(line.startswith("Seccomp:") for line in status):
                return "the kernel has no seccomp"
    except OSError as exc:
        return f"cannot read /proc/self/status: {exc}"
    return None


def _insn(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def _arg(index: int, high: bool = False) -> bytes:
    """Load the low (or high) 32 bits of argument ``index`` (struct seccomp_data, x86-64)."""
    return _insn(_LD_W_ABS, 0, 0, 16 + 8 * index + (4 if high else 0))


def _ret(action: int) -> bytes:
    return _insn(_RET, 0, 0, action)


def _arg_in(index: int, values: tuple[int, ...]) -> list[bytes]:
    """Allow when argument ``index`` is one of ``values`` (its high half zero), else deny."""
    count = len(values)
    body = [_arg(index, high=True), _insn(_JEQ, 0, count + 1, 0), _arg(index)]
    body += [_insn(_JEQ, count - position, 0, value) for position, value in enumerate(values)]
    return [*body, _ret(_DENY), _ret(_RET_ALLOW)]


def _flag_set(index: int, flag: int) -> list[bytes]:
    """Allow when argument ``index`` has ``flag`` set, else deny."""
    return [_arg(index), _insn(_JSET, 0, 1, flag), _ret(_RET_ALLOW), _ret(_DENY)]


def program(pid: int) -> bytes:
    """The filter for process ``pid`` (signals may go to it alone), as sock_filter records."""
    guarded = {
        _IOCTL: _arg_in(1, _IOCTLS),
        _CLONE: _flag_set(0, _CLONE_THREAD),
        _KILL: _arg_in(0, (pid,)),
        _TGKILL: _arg_in(0, (pid,)),
        _PRCTL: _arg_in(0, _PRCTLS),
    }
    code = [
        _insn(_LD_W_ABS, 0, 0, 4),  # arch
        _insn(_JEQ, 1, 0, _AUDIT_ARCH_X86_64),
        _ret(_RET_KILL_PROCESS),
        _insn(_LD_W_ABS, 0, 0, 0),  # nr
        _insn(_JGE, 0, 1, _X32_BIT),
        _ret(_DENY),
        _insn(_JEQ, 0, 1, _CLONE3),
        _ret(_NO_SYSCALL),
    ]
    for number in sorted(_ALLOWED.values()):
        code += [_insn(_JEQ, 0, 1, number), _ret(_RET_ALLOW)]
    for number, check in guarded.items():  # each check ends in a return, so A is nr after it
        code += [_insn(_JEQ, 0, len(check), number), *check]
    code.append(_ret(_DENY))
    return b"".join(code)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def no_new_privileges() -> None:
    """No program this process runs gains privileges (set-user-ID bits, file capabilities)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")


def install() -> None:
    """Set no_new_privs and install the filter on every thread of this process (for good)."""
    no_new_privileges()
    libc = ctypes.CDLL(None, use_errno=True)
    code = program(os.getpid())
    buffer = ctypes.create_string_buffer(code, len(code))
    fprog = _SockFprog(len(code) // 8, ctypes.addressof(buffer))
    flags = _SECCOMP_FILTER_FLAG_TSYNC  # the threads NumPy's libraries already started too
    result = libc.syscall(_NR_SECCOMP, _SECCOMP_SET_MODE_FILTER, flags, ctypes.byref(fprog))
    if result != 0:
        error = ctypes.get_errno() if result < 0 else errno.EBUSY  # >0: a thread that differs
        raise OSError(error, "seccomp(SECCOMP_SET_MODE_FILTER)")
