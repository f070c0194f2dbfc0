"""Run a command under the seccomp policy of systemd/stird.service, without systemd:

    python seccomp_sandbox.py COMMAND [ARG...]

emulates, with libseccomp (a dependency of systemd itself), what systemd installs for

* ``SystemCallFilter=@system-service`` + ``SystemCallFilter=~@privileged @resources`` with
  ``SystemCallErrorNumber=EPERM`` (groups expanded by ``systemd-analyze syscall-filter``);
* ``MemoryDenyWriteExecute=yes``: mmap with PROT_WRITE|PROT_EXEC, mprotect/pkey_mprotect
  with PROT_EXEC and shmat with SHM_EXEC fail with EPERM (src/shared/seccomp-util.c);
* ``RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6``: other socket() families fail with
  EAFNOSUPPORT.

It checks that the filters bite before it execs the command.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import mmap
import os
import socket
import subprocess
import sys

ALLOW = 0x7FFF0000  # SCMP_ACT_ALLOW
CMP_EQ, CMP_GT, CMP_MASKED_EQ = 4, 6, 7  # enum scmp_compare
PROT_WRITE, PROT_EXEC, SHM_EXEC = 0x2, 0x4, 0o100000
ALLOWED_FAMILIES = {socket.AF_UNIX, socket.AF_INET, socket.AF_INET6}
#: Always permitted by systemd with an allow list (systemd.exec(5), SystemCallFilter=).
IMPLICIT = {"execve", "exit", "exit_group", "getrlimit", "rt_sigreturn", "sigreturn"}


class Cmp(ctypes.Structure):
    _fields_ = [  # struct scmp_arg_cmp
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("a", ctypes.c_uint64),
        ("b", ctypes.c_uint64),
    ]


def errno_action(code: int) -> int:
    return 0x00050000 | code  # SCMP_ACT_ERRNO


def syscall_groups() -> dict[str, list[str]]:
    out = subprocess.run(
        ["systemd-analyze", "syscall-filter"], check=True, capture_output=True, text=True
    ).stdout
    groups: dict[str, list[str]] = {}
    current: list[str] = []
    for line in out.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.strip(), [])
        elif line.startswith("    ") and not line.strip().startswith("#"):
            current.append(line.strip())
    return groups


def expand(name: str, groups: dict[str, list[str]]) -> set[str]:
    if not name.startswith("@"):
        return {name}
    return set().union(*(expand(entry, groups) for entry in groups[name]))


def allowed_syscalls() -> set[str]:
    groups = syscall_groups()
    denied = expand("@privileged", groups) | expand("@resources", groups)
    return (expand("@system-service", groups) - denied) | IMPLICIT


class Filter:
    def __init__(self, lib: ctypes.CDLL, default: int) -> None:
        self.lib = lib
        self.ctx = lib.seccomp_init(default)
        assert self.ctx, "seccomp_init failed"

    def rule(self, action: int, name: str, *cmps: Cmp) -> None:
        nr = self.lib.seccomp_syscall_resolve_name(name.encode())
        if nr < 0:  # not a system call on this architecture
            return
        array = (Cmp * max(1, len(cmps)))(*cmps)
        rc = self.lib.seccomp_rule_add_array(self.ctx, action, nr, len(cmps), array)
        assert rc == 0, f"seccomp_rule_add({name}) = {rc}"

    def load(self) -> None:
        assert self.lib.seccomp_load(self.ctx) == 0, "seccomp_load failed"


def libseccomp() -> ctypes.CDLL:
    lib = ctypes.CDLL(ctypes.util.find_library("seccomp") or "libseccomp.so.2")
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint, ctypes.POINTER(Cmp),
    ]  # fmt: skip
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    return lib


def install() -> None:
    lib = libseccomp()
    families = Filter(lib, ALLOW)
    for family in sorted(set(range(11)) - ALLOWED_FAMILIES):
        families.rule(errno_action(errno.EAFNOSUPPORT), "socket", Cmp(0, CMP_EQ, family, 0))
    families.rule(errno_action(errno.EAFNOSUPPORT), "socket", Cmp(0, CMP_GT, 10, 0))
    wx = Filter(lib, ALLOW)
    both = PROT_WRITE | PROT_EXEC
    wx.rule(errno_action(errno.EPERM), "mmap", Cmp(2, CMP_MASKED_EQ, both, both))
    for name in ("mprotect", "pkey_mprotect"):
        wx.rule(errno_action(errno.EPERM), name, Cmp(2, CMP_MASKED_EQ, PROT_EXEC, PROT_EXEC))
    wx.rule(errno_action(errno.EPERM), "shmat", Cmp(2, CMP_MASKED_EQ, SHM_EXEC, SHM_EXEC))
    calls = Filter(lib, errno_action(errno.EPERM))
    for name in sorted(allowed_syscalls()):
        calls.rule(ALLOW, name)
    for f in (families, wx, calls):
        f.load()


def check_effective() -> None:
    try:
        mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    except PermissionError:
        pass
    else:
        sys.exit("seccomp_sandbox: writable executable memory was not refused")
    try:
        socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM).close()
    except OSError as exc:
        assert exc.errno == errno.EAFNOSUPPORT
    else:
        sys.exit("seccomp_sandbox: an AF_NETLINK socket was not refused")
    try:
        os.setpriority(os.PRIO_PROCESS, 0, 1)  # @resources
    except PermissionError:
        pass
    else:
        sys.exit("seccomp_sandbox: setpriority() (@resources) was not refused")


if __name__ == "__main__":
    install()
    check_effective()
    os.execvp(sys.argv[1], sys.argv[1:])
