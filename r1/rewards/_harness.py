"""Sandbox harness: runs ONE untrusted program and its test expressions, in a child process.

Started by `r1.rewards.sandbox` as ``python -I -S -B _harness.py RESULT_FD JOB_FD`` with a
JSON job on JOB_FD (stdin when absent); imports nothing from r1. Order of events (everything
before step 5 is trusted code):

1. read the job (program, test units, nonce, limits, io mode); stdin becomes /dev/null, except
   in io mode (a stdin/stdout case), where stdin carries the case input and stdout goes back
   to the parent, which compares it with the expected output;
2. when root: ``unshare(CLONE_NEWNET | CLONE_NEWNS)``; private tmpfs over /tmp, /var/tmp,
   /run/lock, /dev/shm, /etc, /home, /root (the Python installation is bound back read-only);
   the working directory is a fresh tmpfs directory that vanishes with the process;
3. rlimits (CPU, address space, file size, open files, processes, no core dumps);
4. when root: drop to uid/gid 65534 (nobody) with no supplementary groups;
5. install an audit hook (files outside the work dir and the Python library, sockets, processes,
   signals to others, ctypes, frame / gc introspection, new audit hooks, code objects) and run
   the program, then each test unit's expressions; the values (plain Python data only, exact
   builtin types) go back as ``repr`` frames tagged with the nonce on RESULT_FD. In io mode
   there are no test units: after the program come its atexit callbacks and a flush of the
   current ``sys.stdout`` and the real one, as at a normal interpreter exit.

The verdict of each assert is computed by the parent from those values, not here.
"""

import atexit
import builtins
import os
import resource
import sys

CLONE_NEWNS, CLONE_NEWNET = 0x00020000, 0x40000000
MS_RDONLY, MS_REMOUNT, MS_BIND, MS_MOVE, MS_REC, MS_PRIVATE = 1, 32, 4096, 8192, 16384, 1 << 18
NOBODY = 65534
MAX_ITEMS = 100_000


def _isolate(keep):
    """Network + mount namespaces with private tmpfs over the writable / sensitive dirs.
    Returns the work dir, or raises OSError when not permitted."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)

    def check(result, what):
        if result != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"{what}: {os.strerror(errno)}")

    check(libc.unshare(CLONE_NEWNET | CLONE_NEWNS), "unshare")
    check(libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "mount private")
    # /tmp first: its private tmpfs then parks the kept paths while the others are covered.
    check(libc.mount(b"tmpfs", b"/tmp", b"tmpfs", 0, b"size=64m,mode=0755"), "tmpfs /tmp")
    for target in (b"/var/tmp", b"/run/lock", b"/dev/shm", b"/etc", b"/home", b"/root"):
        if not os.path.isdir(target):
            continue
        staged = []
        for path in keep:
            if path.startswith(target + b"/"):
                park = b"/tmp/.r1keep%d" % len(staged)
                os.makedirs(park)
                check(libc.mount(path, park, None, MS_BIND | MS_REC, None), "bind")
                staged.append((park, path))
        check(libc.mount(b"tmpfs", target, b"tmpfs", 0, b"size=16m,mode=0755"), "tmpfs")
        for park, path in staged:
            os.makedirs(path, exist_ok=True)
            check(libc.mount(park, path, None, MS_MOVE, None), "move")
            libc.mount(b"none", path, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_REC, None)
            os.rmdir(park)
    work = "/tmp/work"
    os.makedirs(work, mode=0o700)
    os.chown(work, NOBODY, NOBODY)
    return work


def _limits(job, dropping):
    def limit(which, value):
        try:
            resource.setrlimit(which, (value, value))
        except (ValueError, OSError):
            pass

    cpu = max(1, int(job["cpu_s"]))
    try:
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    except (ValueError, OSError):
        pass
    limit(resource.RLIMIT_AS, int(job["memory_mb"]) << 20)
    limit(resource.RLIMIT_FSIZE, int(job["file_size_mb"]) << 20)
    limit(resource.RLIMIT_CORE, 0)
    limit(resource.RLIMIT_NOFILE, 64)
    if dropping:
        # Counts processes of uid 65534 system-wide; enforced because we drop root below.
        limit(resource.RLIMIT_NPROC, int(job["max_processes"]))


def main():
    result_fd = int(sys.argv[1])
    job_fd = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    raw = b""
    while True:
        chunk = os.read(job_fd, 1 << 20)
        if not chunk:
            break
        raw += chunk
    import json

    job = json.loads(raw.decode("utf-8"))
    del raw
    io_mode = bool(job.get("io"))
    if job_fd != 0:
        os.close(job_fd)
    if not io_mode:  # io mode: stdin is the case input, stdout goes back to the parent
        devnull = os.open("/dev/null", os.O_RDWR)
        os.dup2(devnull, 0)
        os.close(devnull)
    nonce = job.pop("nonce")

    _write, _repr, _type, _len, _str = os.write, repr, type, len, str
    _exec, _eval, _compile = exec, eval, compile
    _int, _float, _bool, _bytes, _complex = int, float, bool, bytes, complex
    _list, _tuple, _set, _frozenset, _dict = list, tuple, set, frozenset, dict
    _isinstance, _BaseException, _PermissionError = isinstance, BaseException, PermissionError

    def send(*frame):
        data = (_repr((nonce,) + frame) + "\n").encode("utf-8", "backslashreplace")
        try:
            while data:
                data = data[_write(result_fd, data[:65536]) :]
        except OSError:
            pass

    root = os.geteuid() == 0
    dropping = root and job["isolate"]
    work = job.get("workdir")
    isolation = "none"
    prefixes = sorted({os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)})
    if dropping:
        try:
            work = _isolate([p.encode() for p in prefixes])
            isolation = "namespaces"
        except OSError as exc:
            isolation = "setuid-only (" + str(exc) + ")"
    for name in list(sys.modules):  # so that the program's own import is seen (and refused)
        if name.split(".")[0] in ("ctypes", "_ctypes"):
            del sys.modules[name]
    if work is None:
        send("fatal", "no work dir")
        return
    os.chdir(work)
    os.environ.clear()
    os.environ.update({"HOME": work, "TMPDIR": work, "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})
    _limits(job, dropping)
    if dropping:
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
        isolation += "+nobody"
    send("isolation", isolation)

    work_real = os.path.realpath(work)
    readable = [work_real] + prefixes + ["/dev/null", "/dev/urandom", "/dev/zero"]
    writable = [work_real, "/dev/null"]
    blocked_imports = {
        "ctypes",
        "_ctypes",
        "_testcapi",
        "_testinternalcapi",
        "_posixsubprocess",
        "_xxsubinterpreters",
        "_xxinterpchannels",
        "faulthandler",
        "_tracemalloc",
        "pty",
    }
    blocked_events = {
        "socket.__new__": "socket",
        "socket.connect": "socket",
        "socket.bind": "socket",
        "socket.getaddrinfo": "socket",
        "socket.sendto": "socket",
        "socket.gethostbyname": "socket",
        "os.system": "process",
        "subprocess.Popen": "process",
        "os.exec": "process",
        "os.posix_spawn": "process",
        "os.spawn": "process",
        "os.fork": "process",
        "os.forkpty": "process",
        "os.kill": "kill",
        "os.killpg": "kill",
        "signal.pthread_kill": "kill",
        "ctypes.dlopen": "ctypes",
        "ctypes.dlsym": "ctypes",
        "ctypes.cdata": "ctypes",
        "gc.get_objects": "introspection",
        "gc.get_referrers": "introspection",
        "gc.get_referents": "introspection",
        "sys.addaudithook": "audit",
        "sys.settrace": "introspection",
        "sys._current_frames": "introspection",
        "sys.setprofile": "introspection",
        "code.__new__": "code",
        "function.__new__": "code",
        "resource.setrlimit": "limits",
        "resource.prlimit": "limits",
        "os.setuid": "privileges",
        "os.chroot": "privileges",
        "pickle.find_class": "code",
    }
    path_events = {
        "os.remove",
        "os.rename",
        "os.rmdir",
        "os.mkdir",
        "os.symlink",
        "os.link",
        "os.chmod",
        "os.chown",
        "os.truncate",
        "os.utime",
        "shutil.rmtree",
        "shutil.copyfile",
        "shutil.move",
        "os.listdir",
        "os.scandir",
        "os.chdir",
    }
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    _realpath, _fspath, _startswith = os.path.realpath, os.fspath, str.startswith
    armed = [False]

    def under(path, roots):
        try:
            if _isinstance(path, int):
                return True
            path = _fspath(path)
            if _isinstance(path, bytes):
                path = path.decode("utf-8", "surrogateescape")
            real = _realpath(path)
        except _BaseException:
            return False
        for r in roots:
            if real == r or _startswith(real, r.rstrip("/") + "/"):
                return True
        return False

    def violation(what):
        send("violation", what)
        raise _PermissionError("sandbox: " + what + " is not allowed")

    def hook(event, args):
        if not armed[0]:
            return
        if event == "open":
            path, mode, flags = args
            if path is None or _isinstance(path, int):
                return
            mode = mode or ""
            wants_write = ((flags or 0) & write_flags) != 0
            for c in "wax+":
                if c in mode:
                    wants_write = True
            if not under(path, writable if wants_write else readable):
                violation("open:" + ("write" if wants_write else "read"))
        elif event in blocked_events:
            violation(blocked_events[event])
        elif event == "import":
            name = args[0] or ""
            if name.split(".")[0] in blocked_imports:
                violation("import:" + name)
        elif event in path_events:
            roots = readable if event in ("os.listdir", "os.scandir", "os.chdir") else writable
            for path in args[:2]:
                if _isinstance(path, str | bytes | os.PathLike) and not under(path, roots):
                    violation("path:" + event)

    sys.addaudithook(hook)
    program, units = job["program"], job["units"]
    del job

    def encode(value, budget):
        budget[0] -= 1
        if budget[0] < 0:
            raise ValueError("value too large")
        kind = _type(value)
        if kind is _bool or value is None:
            return ["k", _repr(value)]
        if kind is _int:
            return ["i", _str(value)]
        if kind is _float:
            return ["f", _repr(value)]
        if kind is _complex:
            return ["c", _repr(value.real), _repr(value.imag)]
        if kind is _str:
            return ["s", value]
        if kind is _bytes:
            return ["y", value.hex()]
        if kind is _list or kind is _tuple:
            return ["l" if kind is _list else "t", [encode(v, budget) for v in value]]
        if kind is _set or kind is _frozenset:
            return ["e" if kind is _set else "z", [encode(v, budget) for v in value]]
        if kind is _dict:
            return ["d", [[encode(k, budget), encode(v, budget)] for k, v in value.items()]]
        raise TypeError("not plain data: " + kind.__name__)

    clean_builtins = _dict(builtins.__dict__)
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    _flush, _run_exitfuncs = sys.stdout.flush, atexit._run_exitfuncs

    def flush_current_stdout():
        sys.stdout.flush()

    def end_as_interpreter_would():
        # io mode: what a normal exit does before the stdout the parent reads is complete:
        # the program's atexit callbacks, then flushing whatever sys.stdout now is (e.g. a
        # buffering wrapper the program installed) and the real stdout. Program code, still
        # under the audit hook; the verdict is the parent's comparison of stdout.
        for step in (_run_exitfuncs, flush_current_stdout, _flush):
            try:
                step()
            except _BaseException:
                pass

    armed[0] = True
    try:
        _exec(_compile(program, "<program>", "exec"), namespace)
    except SystemExit as exc:
        # A stdin/stdout program may end with exit() / sys.exit(0): a normal end there.
        if not (io_mode and exc.code in (None, 0)):
            send("exit")
            os._exit(0)
    except _BaseException as exc:
        send("program_error", _type(exc).__name__)
        os._exit(0)
    if io_mode:
        end_as_interpreter_would()
    send("program_done")
    for index, unit in enumerate(units):
        # Undo what the program did to builtins before each test.
        builtins.__dict__.clear()
        builtins.__dict__.update(clean_builtins)
        try:
            if unit[0] == "exprs":
                values = [_eval(_compile(src, "<test>", "eval"), namespace) for src in unit[1]]
                send("values", index, [encode(v, [MAX_ITEMS]) for v in values])
            else:
                _exec(_compile(unit[1], "<test>", "exec"), namespace)
                send("ran", index)
        except SystemExit:
            send("exit")
            os._exit(0)
        except _BaseException as exc:
            send("error", index, _type(exc).__name__)
    send("done")
    os._exit(0)


if __name__ == "__main__":
    main()
