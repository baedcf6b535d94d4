"""Confinement of one sandboxed process, applied by the process to itself before any untrusted byte runs.

A leaf module (no `factory` import): it runs inside the sandbox, where the zygote loaded it under the plain name
`sandbox_confine`. Order matters:

1. resource limits (CPU, address space, file size, processes, open files, no core dumps);
2. as root: lock securebits, drop the capability bounding set and ambient caps (needs CAP_SETPCAP);
3. no_new_privs;
4. Landlock: read/execute only the interpreter, system libraries and the work dir; write only the work dir;
   no TCP bind/connect; no signals or abstract unix sockets outside the sandbox (kernel ABI permitting);
5. as root: clear all capabilities (uid 0 without capabilities cannot mount, kill others, override file modes…);
6. seccomp: deny sockets other than AF_UNIX, new processes (fork/vfork/clone without CLONE_THREAD, clone3) when
   only one process is allowed, leaving the process group (setsid/setpgid), signalling other processes, ptrace,
   cross-process memory access and io_uring (which can open sockets without socket(2)).

Every step is made per process (after the zygote's fork): nothing of one sample's confinement is reused by another,
only the static list of readable paths is computed once (`read_paths_for_python`).
"""
from __future__ import annotations

import ctypes
import functools
import os
import resource
import struct
import sys

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.prctl.restype = ctypes.c_int

PR_SET_PDEATHSIG = 1
PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
PR_CAPBSET_DROP = 24
PR_SET_SECUREBITS = 28
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
SECCOMP_MODE_FILTER = 2

# --- per-architecture syscall numbers -------------------------------------------------------------------------
_ARCH = {
    "x86_64": dict(audit=0xC000003E, socket=41, fork=57, vfork=58, clone=56, clone3=435, setsid=112, setpgid=109,
                   ptrace=101, kill=62, tkill=200, tgkill=234, pidfd_open=434, process_vm_readv=310,
                   process_vm_writev=311, io_uring_setup=425, x32_bit=0x40000000),
    "aarch64": dict(audit=0xC00000B7, socket=198, fork=None, vfork=None, clone=220, clone3=435, setsid=157,
                    setpgid=154, ptrace=117, kill=129, tkill=130, tgkill=131, pidfd_open=434,
                    process_vm_readv=270, process_vm_writev=271, io_uring_setup=425, x32_bit=None),
}
_LANDLOCK_CREATE_RULESET, _LANDLOCK_ADD_RULE, _LANDLOCK_RESTRICT_SELF = 444, 445, 446
_CAPSET = {"x86_64": 126, "aarch64": 91}


class ConfineError(RuntimeError):
    pass


def _fail(msg: str) -> None:
    raise ConfineError(f"{msg}: {os.strerror(ctypes.get_errno())}")


# --- limits --------------------------------------------------------------------------------------------------
def set_limits(lim: dict) -> None:
    cpu = max(1, int(lim["cpu_s"] + 0.999))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))  # SIGXCPU at cpu, SIGKILL one second later
    mem = int(lim["memory_mb"]) * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    fsize = int(lim["file_size_mb"]) * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    nofile = int(lim["open_files"])
    resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
    # RLIMIT_NPROC counts every process of the user and does not bind uid 0 at all: seccomp below is what really
    # stops new processes; this limit is a second fence for unprivileged users when processes are allowed.
    # Threads count too, hence the allowance on top of the processes the user already runs. (The kernel never
    # applies it to uid 0, so for root the /proc scan, a millisecond per run, is skipped: the limit is moot.)
    running = _user_process_count() if os.getuid() != 0 else 0
    nproc = running + int(lim["max_processes"]) + int(lim.get("max_threads", 32))
    resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))


def _user_process_count() -> int:
    uid = os.getuid()
    count = 0
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.stat(f"/proc/{name}").st_uid == uid:
                    count += 1
            except OSError:
                pass
    return count


# --- capabilities (only when started as root) -----------------------------------------------------------------
_BOUNDING_DROPPED = False  # set once done: the bounding set and securebits are inherited by fork, and stay dropped


def drop_root_bounding() -> None:
    """Irreversible, and inherited: the zygote does it once at start, so its forks skip the 40-odd prctl calls."""
    global _BOUNDING_DROPPED
    if os.geteuid() != 0 or _BOUNDING_DROPPED:
        return
    # SECBIT_NOROOT | SECBIT_NOROOT_LOCKED: uid 0 gains no capabilities from execve any more.
    if _libc.prctl(PR_SET_SECUREBITS, 0x3, 0, 0, 0) != 0:
        _fail("prctl(PR_SET_SECUREBITS)")
    last = int(open("/proc/sys/kernel/cap_last_cap").read())
    for cap in range(last + 1):
        if _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            _fail(f"prctl(PR_CAPBSET_DROP, {cap})")
    _libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    _BOUNDING_DROPPED = True


def clear_capabilities(arch: str) -> None:
    if os.geteuid() != 0:
        return
    header = struct.pack("Ii", 0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    data = bytes(24)  # two __user_cap_data_struct {effective, permitted, inheritable}, all zero
    hbuf, dbuf = ctypes.create_string_buffer(header), ctypes.create_string_buffer(data)
    if _libc.syscall(_CAPSET[arch], hbuf, dbuf) != 0:
        _fail("capset")


# --- Landlock ------------------------------------------------------------------------------------------------
_FS_EXECUTE, _FS_WRITE_FILE, _FS_READ_FILE, _FS_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_FS_DIR_ONLY = sum(1 << i for i in range(4, 13))  # remove dir/file, make char/dir/reg/sock/fifo/block/sym
_FS_REFER, _FS_TRUNCATE, _FS_IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15


def landlock_abi() -> int:
    abi = _libc.syscall(_LANDLOCK_CREATE_RULESET, None, 0, 1)  # LANDLOCK_CREATE_RULESET_VERSION
    return int(abi) if abi > 0 else 0


def landlock_ruleset(read_paths: list[str], rw_files: list[str]) -> tuple[int, int, int, int] | None:
    """A ruleset with the run-independent rules: (fd, abi, file rights, handled rights); None without Landlock."""
    abi = landlock_abi()
    if abi <= 0:
        return None
    file_rights = _FS_EXECUTE | _FS_WRITE_FILE | _FS_READ_FILE
    if abi >= 3:
        file_rights |= _FS_TRUNCATE
    if abi >= 5:
        file_rights |= _FS_IOCTL_DEV
    handled = file_rights | _FS_READ_DIR | _FS_DIR_ONLY | (_FS_REFER if abi >= 2 else 0)
    net = 0b11 if abi >= 4 else 0  # LANDLOCK_ACCESS_NET_BIND_TCP | CONNECT_TCP, with no rule allowing either
    scoped = 0b11 if abi >= 6 else 0  # LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET | LANDLOCK_SCOPE_SIGNAL
    attr = struct.pack("QQQ", handled, net, scoped)
    size = 24 if abi >= 6 else 16 if abi >= 4 else 8
    buf = ctypes.create_string_buffer(attr[:size], size)
    ruleset = _libc.syscall(_LANDLOCK_CREATE_RULESET, buf, size, 0)
    if ruleset < 0:
        _fail("landlock_create_ruleset")
    rules = (ruleset, abi, file_rights, handled)
    for path in read_paths:
        _allow(rules, path, _READ_RIGHTS)
    for path in rw_files:
        _allow(rules, path, _READ_RIGHTS | _FS_WRITE_FILE | (_FS_TRUNCATE if abi >= 3 else 0))
    return rules


_READ_RIGHTS = _FS_EXECUTE | _FS_READ_FILE | _FS_READ_DIR


def _allow(rules: tuple[int, int, int, int], path: str, rights: int) -> None:
    ruleset, _abi, file_rights, _handled = rules
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return
    try:
        if not os.path.isdir(path):
            rights &= file_rights
        rule = ctypes.create_string_buffer(struct.pack("=Qi", rights, fd), 12)
        if _libc.syscall(_LANDLOCK_ADD_RULE, ruleset, 1, rule, 0) != 0:  # LANDLOCK_RULE_PATH_BENEATH
            _fail(f"landlock_add_rule({path})")
    finally:
        os.close(fd)


def apply_landlock(workdir: str, read_paths: list[str], rw_files: list[str],
                   prepared: tuple[int, int, int, int] | None = None) -> int:
    """Restrict this process: `prepared` (from landlock_ruleset, in this same process) plus `read_paths`,
    `rw_files` and full rights on `workdir`. Returns the Landlock ABI (0: none)."""
    rules = prepared or landlock_ruleset([], [])
    if rules is None:
        return 0
    for path in read_paths:
        _allow(rules, path, _READ_RIGHTS)
    for path in rw_files:
        _allow(rules, path, _READ_RIGHTS | _FS_WRITE_FILE | (_FS_TRUNCATE if rules[1] >= 3 else 0))
    _allow(rules, workdir, rules[3])
    if _libc.syscall(_LANDLOCK_RESTRICT_SELF, rules[0], 0) != 0:
        _fail("landlock_restrict_self")
    os.close(rules[0])
    return rules[1]


# --- seccomp -------------------------------------------------------------------------------------------------
_LD_W_ABS, _JEQ, _JSET, _JGE, _RET = 0x20, 0x15, 0x45, 0x35, 0x06
_ALLOW, _KILL = 0x7FFF0000, 0x80000000


def _errno(e: int) -> int:
    return 0x00050000 | e


class _Asm:
    """A tiny classic-BPF assembler with symbolic jump targets (jumps only go forward)."""

    def __init__(self) -> None:
        self.code: list[tuple] = []
        self.labels: dict[str, int] = {}

    def op(self, code: int, k: int = 0, jt: str | int = 0, jf: str | int = 0) -> None:
        self.code.append((code, jt, jf, k & 0xFFFFFFFF))

    def label(self, name: str) -> None:
        self.labels[name] = len(self.code)

    def assemble(self) -> bytes:
        out = b""
        for i, (code, jt, jf, k) in enumerate(self.code):
            rel = [self.labels[j] - i - 1 if isinstance(j, str) else j for j in (jt, jf)]
            if any(not 0 <= r <= 255 for r in rel):
                raise ConfineError("seccomp program jump out of range")
            out += struct.pack("HBBI", code, rel[0], rel[1], k)
        return out


def seccomp_program(arch: str, pid: int, allow_processes: bool) -> bytes:
    import errno

    nr = _ARCH[arch]
    a = _Asm()
    a.op(_LD_W_ABS, 4)  # seccomp_data.arch
    a.op(_JEQ, nr["audit"], 0, "kill")
    a.op(_LD_W_ABS, 0)  # seccomp_data.nr
    if nr["x32_bit"]:
        a.op(_JGE, nr["x32_bit"], "kill", 0)
    rules: list[tuple[int | None, str]] = [
        (nr["socket"], "socket"), (nr["setsid"], "eperm"), (nr["setpgid"], "eperm"), (nr["ptrace"], "eperm"),
        (nr["process_vm_readv"], "eperm"), (nr["process_vm_writev"], "eperm"), (nr["io_uring_setup"], "eperm"),
        (nr["pidfd_open"], "eperm"), (nr["tkill"], "eperm"), (nr["kill"], "kill_self"),
        (nr["tgkill"], "tgkill_self"),
    ]
    if not allow_processes:
        rules += [(nr["fork"], "eagain"), (nr["vfork"], "eagain"), (nr["clone"], "clone"), (nr["clone3"], "enosys")]
    for number, target in rules:
        if number is not None:
            a.op(_JEQ, number, target, 0)
    a.op(_RET, _ALLOW)
    a.label("socket")
    a.op(_LD_W_ABS, 16)  # args[0]: the address family
    a.op(_JEQ, 1, "allow", 0)  # AF_UNIX
    a.op(_RET, _errno(errno.EACCES))
    a.label("clone")
    a.op(_LD_W_ABS, 16)  # args[0]: clone flags
    a.op(_JSET, 0x00010000, "allow", 0)  # CLONE_THREAD: threads are fine, new processes are not
    a.op(_RET, _errno(errno.EAGAIN))
    a.label("kill_self")
    a.op(_LD_W_ABS, 16)  # args[0]: pid (0 = own group, -pid = own group: the sandbox is its own session)
    a.op(_JEQ, pid, "allow", 0)
    a.op(_JEQ, 0, "allow", 0)
    a.op(_JEQ, -pid, "allow", 0)
    a.op(_RET, _errno(errno.EPERM))
    a.label("tgkill_self")
    a.op(_LD_W_ABS, 16)  # args[0]: thread group id
    a.op(_JEQ, pid, "allow", 0)
    a.op(_RET, _errno(errno.EPERM))
    a.label("eperm")
    a.op(_RET, _errno(errno.EPERM))
    a.label("eagain")
    a.op(_RET, _errno(errno.EAGAIN))
    a.label("enosys")
    a.op(_RET, _errno(errno.ENOSYS))
    a.label("allow")
    a.op(_RET, _ALLOW)
    a.label("kill")
    a.op(_RET, _KILL)
    return a.assemble()


def apply_seccomp(arch: str, allow_processes: bool) -> None:
    prog = seccomp_program(arch, os.getpid(), allow_processes)
    filt = ctypes.create_string_buffer(prog, len(prog))
    fprog = struct.pack("HxxxxxxQ", len(prog) // 8, ctypes.addressof(filt))
    fbuf = ctypes.create_string_buffer(fprog, len(fprog))
    if _libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, fbuf, 0, 0) != 0:
        _fail("prctl(PR_SET_SECCOMP)")


@functools.cache
def _static_read_paths() -> tuple[str, ...]:
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(os.path.realpath(sys.executable))}
    paths.update(p for p in sys.path if p and os.path.isdir(p))
    paths.update(["/usr", "/lib", "/lib64", "/lib32", "/bin", "/etc/ld.so.cache", "/etc/ld.so.conf",
                  "/etc/ld.so.conf.d", "/etc/localtime", "/dev/urandom", "/dev/random", "/dev/zero",
                  "/sys/devices/system/cpu"])
    return tuple(sorted({os.path.realpath(p) for p in paths} | paths))


def read_paths_for_python() -> list[str]:
    return [*_static_read_paths(), f"/proc/{os.getpid()}"]


def prepare() -> dict:
    """What a pre-forked process (sandbox_zygote) does while it waits for its run: the Landlock ruleset with every
    rule that does not depend on the run (its own /proc entry included). Nothing is restricted yet."""
    return {"landlock": landlock_ruleset(read_paths_for_python(), ["/dev/null"])}


def confine(spec: dict, prepared: dict | None = None) -> dict:
    """Apply every limit; return what was applied (reported back to the parent on failure paths)."""
    arch = os.uname().machine
    if arch not in _ARCH:
        raise ConfineError(f"unsupported architecture {arch}")
    lim = spec["limits"]
    set_limits(lim)
    drop_root_bounding()
    if _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        _fail("prctl(PR_SET_NO_NEW_PRIVS)")
    rules = (prepared or {}).get("landlock")
    if rules is not None:
        abi = apply_landlock(spec["workdir"], spec.get("extra_read", []), [], prepared=rules)
    else:
        abi = apply_landlock(spec["workdir"], read_paths_for_python() + spec.get("extra_read", []), ["/dev/null"])
    if abi == 0 and spec.get("require_landlock", True):
        raise ConfineError("Landlock is not available in this kernel: file-system confinement impossible")
    clear_capabilities(arch)
    apply_seccomp(arch, allow_processes=int(lim["max_processes"]) > 1)
    return {"landlock_abi": abi}
