"""The inside of the evaluation sandbox's jail: `python -I -S jail.py dir=D scratch=P hide=P keep=P ... -- CMD...`.

sandbox.py starts this script (never imports it) with the run's rlimits already set. It creates user,
mount, PID, network, IPC and UTS namespaces, forks the namespace's init, which builds the
filesystem view, brings up the loopback, runs CMD as its only child and reports CMD's wait status;
then this script exits the way CMD did (same code, or the same signal). When init ends, or is killed
because this script was, the kernel kills every process left in the namespace.

Plan items (paths already resolved by sandbox.jail_plan): dir= the run's directory (stays writable),
scratch= replaced by a fresh writable tmpfs, hide= replaced by an empty read-only directory, keep=
mounted back read-only inside a scratch or hidden directory. Everything else is read-only.

It imports only os, sys, signal and ctypes: it starts once per run, so its start-up time counts.
"""

import ctypes
import os
import signal
import sys

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_BIND, MS_REC, MS_PRIVATE = 2, 4, 8, 4096, 16384, 1 << 18
MOUNT_ATTR_RDONLY, AT_RECURSIVE, AT_FDCWD = 0x1, 0x8000, -100
SYS_MOUNT_SETATTR = 442  # the same number on every architecture (Linux 5.12+)
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38
AF_INET, SOCK_DGRAM, SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 2, 2, 0x8913, 0x8914, 0x1
INNER_ID = 1000  # uid and gid inside: not 0, so exec drops every capability in the namespace
SETUP_FAILED = 125  # exit code when the jail could not be built (the program never ran)

_libc = ctypes.CDLL(None, use_errno=True)
_long = ctypes.c_long


def _check(rc: int, what: str) -> int:
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return rc


def _mount(source, target: str, fstype, flags: int, data=None) -> None:
    def enc(s):
        return s.encode() if s is not None else None

    rc = _libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data))
    _check(rc, f"mount {fstype or source} on {target}")


def _set_readonly(path: str, readonly: bool, recursive: bool = False) -> None:
    # struct mount_attr {attr_set, attr_clr, propagation, userns_fd}
    attr = (ctypes.c_uint64 * 4)(MOUNT_ATTR_RDONLY if readonly else 0, 0 if readonly else MOUNT_ATTR_RDONLY, 0, 0)
    rc = _libc.syscall(_long(SYS_MOUNT_SETATTR), _long(AT_FDCWD), ctypes.c_char_p(path.encode()),
                       _long(AT_RECURSIVE if recursive else 0), ctypes.byref(attr), _long(ctypes.sizeof(attr)))
    _check(rc, f"mount_setattr {path}")


def _prctl(option: int, value: int) -> None:
    _check(_libc.prctl(ctypes.c_int(option), ctypes.c_ulong(value), ctypes.c_ulong(0), ctypes.c_ulong(0),
                       ctypes.c_ulong(0)), "prctl")


def _default_signal(signum: int) -> None:
    _libc.signal(ctypes.c_int(signum), ctypes.c_void_p(0))  # SIG_DFL


def parse(argv: list[str]) -> tuple[dict, list[str]]:
    """The plan and the command from our arguments (the format sandbox.jail_argv writes)."""
    split = argv.index("--")
    plan = {"dir": "", "scratch": [], "hide": [], "keep": []}
    for item in argv[:split]:
        kind, _, path = item.partition("=")
        if kind == "dir":
            plan["dir"] = path
        else:
            plan[kind].append(path)
    return plan, argv[split + 1:]


def _enter_namespaces() -> None:
    uid, gid = os.getuid(), os.getgid()
    if uid == 0:
        os.setgroups([])  # root's supplementary groups would otherwise follow it in, unremovable
    _check(_libc.unshare(ctypes.c_int(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC
                                      | CLONE_NEWUTS)), "unshare")
    for name, text in (("setgroups", "deny"), ("uid_map", f"{INNER_ID} {uid} 1"), ("gid_map", f"{INNER_ID} {gid} 1")):
        with open(f"/proc/self/{name}", "w") as fh:
            fh.write(text)


def _build_view(plan: dict) -> None:
    """Read-only root, fresh scratch tmpfs, empty homes with toolchains mounted back, the run's directory writable."""
    _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing mounted here propagates to the host
    _set_readonly("/", True, recursive=True)
    binds = [*plan["keep"], plan["dir"]]  # sorted parents first by jail_plan; the run's directory last
    # opened before the tmpfs hide them, mounted back later through /proc/self/fd
    fds = {path: os.open(path, os.O_PATH | os.O_DIRECTORY) for path in binds}
    for path in plan["scratch"]:
        _mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777,size=256m")
    for path in plan["hide"]:
        _mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m")
    for path in binds:
        os.makedirs(path, exist_ok=True)  # a mount point inside a tmpfs above
        _mount(f"/proc/self/fd/{fds[path]}", path, None, MS_BIND | MS_REC)  # read-only, like its source
    _set_readonly(plan["dir"], False)
    for path in plan["hide"]:
        _set_readonly(path, True)  # after the mount points were made in it
    try:  # a /proc of the new PID namespace; some containers forbid it, then the host's stays (read-only)
        _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    except OSError:
        pass


def _loopback_up() -> None:
    sock = _check(_libc.socket(AF_INET, SOCK_DGRAM, 0), "socket")
    try:
        ifreq = ctypes.create_string_buffer(b"lo", 40)  # struct ifreq: name[16], then ifr_flags (short)
        _check(_libc.ioctl(sock, _long(SIOCGIFFLAGS), ifreq), "ioctl SIOCGIFFLAGS lo")
        flags = int.from_bytes(ifreq.raw[16:18], sys.byteorder) | IFF_UP
        ctypes.memmove(ctypes.addressof(ifreq) + 16, flags.to_bytes(2, sys.byteorder), 2)
        _check(_libc.ioctl(sock, _long(SIOCSIFFLAGS), ifreq), "ioctl SIOCSIFFLAGS lo")
    finally:
        os.close(sock)


def _exec_program(cmd: list[str], workdir: str):
    try:
        os.chdir(workdir)
        _prctl(PR_SET_NO_NEW_PRIVS, 1)
        for signum in (signal.SIGPIPE, signal.SIGXFSZ):  # Python ignores these; the program must not inherit that
            _default_signal(signum)
        os.execvp(cmd[0], cmd)
    except OSError as exc:
        os.write(2, f"cannot start {cmd[0]}: {exc}\n".encode())
    os._exit(127)


def _init(plan: dict, cmd: list[str], alive_r: int, status_w: int) -> int:
    """PID 1 of the namespace: build the view, run the program, reap orphans, report the program's wait status."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # the helper killed (timeout) -> init dies -> all die
    os.set_blocking(alive_r, False)
    try:
        os.read(alive_r, 1)
        return SETUP_FAILED  # EOF: the helper died before the line above, so nobody would kill us
    except BlockingIOError:
        pass
    try:
        _build_view(plan)
        _loopback_up()
    except OSError as exc:
        os.write(2, f"sandbox: cannot build the jail: {exc}\n".encode())
        return SETUP_FAILED
    program = os.fork()
    if program == 0:
        _exec_program(cmd, plan["dir"])
    while True:
        pid, status = os.waitpid(-1, 0)  # orphans are reparented to us: reap them on the way
        if pid == program:
            os.write(status_w, str(status).encode())
            return 0  # returning ends the namespace: the kernel kills whatever the program left running


def main(argv: list[str]) -> int:
    plan, cmd = parse(argv)
    try:
        _enter_namespaces()
    except OSError as exc:
        print(f"sandbox: cannot create namespaces: {exc}", file=sys.stderr)
        return SETUP_FAILED
    alive_r, alive_w = os.pipe()  # init reads EOF once we are gone
    status_r, status_w = os.pipe()
    init = os.fork()  # the first child in the new PID namespace is its init
    if init == 0:
        os.close(alive_w)
        os.close(status_r)
        try:
            code = _init(plan, cmd, alive_r, status_w)
        except BaseException as exc:  # a forked child must never run on into our caller's code
            os.write(2, f"sandbox: the jail's init failed: {exc!r}\n".encode())
            code = SETUP_FAILED
        os._exit(code)
    os.close(alive_r)
    os.close(status_w)
    _, init_status = os.waitpid(init, 0)
    report = os.read(status_r, 32)
    code = os.waitstatus_to_exitcode(int(report) if report else init_status)
    if code < 0:  # the program died of a signal: die of the same one, so our caller sees it too
        _default_signal(-code)
        os.kill(os.getpid(), -code)
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
