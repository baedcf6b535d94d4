"""Every attack on the sandbox is really attempted here, and each is shown contained."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest

from factory.verify.rewards.sandbox import Limits, Sandbox, capabilities

pytestmark = pytest.mark.skipif(not capabilities()["usable"],
                                reason=f"no confinement on this machine: {capabilities()['why_not']}")

FAST = Limits(cpu_s=2, wall_s=5, memory_mb=512)


def run(src: str, limits: Limits = FAST, stdin: bytes | None = None):
    with Sandbox(limits) as sb:
        sb.write("solution.py", textwrap.dedent(src))
        result = sb.run_python("solution.py", stdin=stdin)
        workdir = sb.dir
    assert not os.path.exists(workdir), "the temp dir must be removed"
    return result


def processes_in_group(pgid: int) -> list[int]:
    """Live (not zombie: killed, waiting for init to reap it) processes of the group."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                fields = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            state, pgrp = fields[0], int(fields[2])
            if pgrp == pgid and state not in ("Z", "X"):
                found.append(int(name))
    return found


def test_plain_program_runs_with_stdin_and_threads():
    r = run("""
        import sys, threading
        data = sys.stdin.read()
        out = []
        t = threading.Thread(target=lambda: out.append(data.upper()))
        t.start(); t.join()
        print(out[0])
        open("scratch.txt", "w").write("inside the temp dir is fine")
    """, stdin=b"hello")
    assert r.ok and r.stdout == b"HELLO\n", r


def test_fork_bomb_is_contained():
    r = run("""
        import os
        children = 0
        try:
            while True:
                os.fork()
                children += 1
        except OSError as exc:
            print("fork refused:", exc.errno, "after", children)
    """)
    assert r.stdout.startswith(b"fork refused: 11 after 0"), r
    assert processes_in_group(r.pid) == []


def test_subprocess_and_shell_fork_bomb_are_refused():
    r = run("""
        import subprocess
        try:
            subprocess.run(["sh", "-c", ":(){ :|:& };:"], timeout=2)
            print("spawned")
        except OSError as exc:
            print("spawn refused", exc.errno)
    """)
    assert b"spawn refused" in r.stdout and b"spawned" not in r.stdout, r
    assert processes_in_group(r.pid) == []


def test_leftover_processes_are_killed_when_processes_are_allowed():
    """With processes allowed (a compiler needs them), a child that tries to outlive the run is killed with the
    group, and it cannot leave the group (setsid is refused)."""
    r = run("""
        import os, time
        pid = os.fork()
        if pid == 0:
            try:
                os.setsid()
                print("left the group", flush=True)
            except OSError as exc:
                print("setsid refused", exc.errno, flush=True)
            time.sleep(60)
        else:
            time.sleep(0.3)
            print("parent exits", flush=True)
    """, limits=Limits(cpu_s=2, wall_s=5, memory_mb=512, max_processes=4))
    assert b"setsid refused" in r.stdout and b"left the group" not in r.stdout, r
    time.sleep(0.2)
    assert processes_in_group(r.pid) == []


def test_unbounded_allocation_is_contained():
    r = run("""
        chunks = []
        while True:
            chunks.append(bytearray(50 * 1024 * 1024))
    """)
    assert r.returncode != 0 and b"MemoryError" in r.stderr, r
    r = run("x = bytearray(8 * 1024 ** 3)")
    assert r.returncode != 0 and b"MemoryError" in r.stderr, r


def test_infinite_loop_hits_the_cpu_limit():
    r = run("while True: pass", limits=Limits(cpu_s=1, wall_s=10, memory_mb=512))
    assert r.timed_out and not r.ok and r.wall_s < 5, r
    assert "CPU limit" in r.notes[0]


def test_sleeping_forever_hits_the_wall_clock_limit():
    r = run("import time; time.sleep(600)", limits=Limits(cpu_s=5, wall_s=1, memory_mb=512))
    assert r.timed_out and r.wall_s < 4, r
    assert processes_in_group(r.pid) == []


def test_writing_outside_the_temp_dir_fails(tmp_path):
    outside = tmp_path / "escape.txt"
    victim = tmp_path / "victim.txt"
    victim.write_text("original")
    repo_file = Path(__file__).resolve().parents[2] / "escape-from-sandbox.txt"
    r = run(f"""
        import os
        results = []
        for path in [{str(outside)!r}, {str(repo_file)!r}, "/tmp/escape-from-sandbox.txt"]:
            try:
                open(path, "w").write("x")
                results.append("WROTE " + path)
            except OSError as exc:
                results.append("refused " + str(exc.errno))
        try:
            open({str(victim)!r}, "a").write("tampered")
            results.append("APPENDED")
        except OSError as exc:
            results.append("append refused " + str(exc.errno))
        os.symlink({str(tmp_path)!r}, "link")  # a link inside the temp dir to outside
        try:
            open("link/via-symlink.txt", "w").write("x")
            results.append("WROTE via symlink")
        except OSError as exc:
            results.append("symlink refused " + str(exc.errno))
        try:
            os.link({str(victim)!r}, "hardlink")
            open("hardlink", "a").write("tampered")
            results.append("WROTE via hardlink")
        except OSError as exc:
            results.append("hardlink refused " + str(exc.errno))
        try:
            os.remove({str(victim)!r})
            results.append("REMOVED")
        except OSError as exc:
            results.append("remove refused " + str(exc.errno))
        print(results)
    """)
    assert r.ok, r
    assert b"WROTE" not in r.stdout and b"APPENDED" not in r.stdout and b"REMOVED" not in r.stdout, r.stdout
    assert not outside.exists() and not repo_file.exists() and not Path("/tmp/escape-from-sandbox.txt").exists()
    assert not (tmp_path / "via-symlink.txt").exists()
    assert victim.read_text() == "original"


def test_reading_files_outside_the_allowed_paths_fails(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("s3cr3t")
    r = run(f"""
        try:
            print(open({str(secret)!r}).read())
        except OSError as exc:
            print("read refused", exc.errno)
    """)
    assert b"s3cr3t" not in r.stdout and b"read refused" in r.stdout, r


def test_sockets_cannot_reach_a_listening_server():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(5)
    server.settimeout(0.2)
    port = server.getsockname()[1]
    accepted = []
    done = threading.Event()

    def accept():
        while not done.is_set():
            try:
                conn, _ = server.accept()
                accepted.append(conn)
            except socket.timeout:
                continue

    t = threading.Thread(target=accept)
    t.start()
    try:
        r = run(f"""
            import socket
            for family, kind in [(socket.AF_INET, socket.SOCK_STREAM), (socket.AF_INET, socket.SOCK_DGRAM),
                                 (socket.AF_INET6, socket.SOCK_STREAM)]:
                try:
                    s = socket.socket(family, kind)
                    s.settimeout(1)
                    s.connect(("127.0.0.1" if family == socket.AF_INET else "::1", {port}))
                    s.sendall(b"exfiltrate")
                    print("CONNECTED")
                except OSError as exc:
                    print("refused", exc.errno)
        """)
    finally:
        time.sleep(0.3)  # a connection in flight would be accepted by now
        done.set()
        t.join()
        server.close()
    assert b"CONNECTED" not in r.stdout and r.stdout.count(b"refused") == 3, r
    assert accepted == []


def test_huge_output_is_capped_and_the_program_killed():
    r = run("""
        import sys
        while True:
            sys.stdout.write("x" * 65536)
    """, limits=Limits(cpu_s=5, wall_s=10, memory_mb=512, max_output_bytes=200_000))
    assert r.output_exceeded and not r.ok, r
    assert len(r.stdout) == 200_000
    assert processes_in_group(r.pid) == []


def test_huge_file_is_capped():
    r = run("""
        with open("big.bin", "wb") as fh:
            while True:
                fh.write(b"x" * 1024 * 1024)
    """, limits=Limits(cpu_s=5, wall_s=10, memory_mb=512, file_size_mb=4))
    assert r.returncode != 0 and (r.returncode == -signal.SIGXFSZ or b"File too large" in r.stderr), r


def test_signals_to_other_processes_are_refused():
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        r = run(f"""
            import os, signal
            for pid in ({victim.pid}, 1, -1):
                try:
                    os.kill(pid, signal.SIGKILL)
                    print("KILLED", pid)
                except OSError as exc:
                    print("refused", exc.errno)
        """)
        time.sleep(0.2)
        assert victim.poll() is None, "the sandbox killed a process outside it"
        assert b"KILLED" not in r.stdout, r
    finally:
        victim.kill()
        victim.wait()


def test_compiled_cpp_program_runs_confined():
    import shutil

    if not shutil.which("g++"):
        pytest.skip("no g++ on this machine")
    src = textwrap.dedent("""
        #include <iostream>
        #include <unistd.h>
        #include <fstream>
        int main() { long a, b; std::cin >> a >> b; std::cout << a + b << "\\n";
          std::cout << (fork() < 0 ? "fork refused" : "forked") << "\\n";
          std::ofstream f("/tmp/cpp-escape.txt"); std::cout << (f ? "WROTE" : "write refused") << "\\n"; }
    """)
    with Sandbox(FAST) as sb:
        sb.write("main.cpp", src)
        build = sb.run_exec(["g++", "-O0", "-o", "main", "main.cpp"],
                            limits=Limits(cpu_s=60, wall_s=120, memory_mb=2048, max_processes=16, file_size_mb=256))
        assert build.returncode == 0, build.stderr_tail()
        r = sb.run_exec(["./main"], stdin=b"2 40\n")
    assert r.stdout.split(b"\n")[:3] == [b"42", b"fork refused", b"write refused"], r
    assert not Path("/tmp/cpp-escape.txt").exists()


def test_a_run_cannot_poison_the_next_run(tmp_path):
    """A program that swaps its own files for links to secrets gains nothing in the next run of the same sandbox,
    and the parent never writes through such a link."""
    secret = tmp_path / "secret.txt"
    secret.write_text("s3cr3t-token")
    with Sandbox(FAST) as sb:
        sb.write("solution.py", textwrap.dedent(f"""
            import os
            os.remove("solution.py")
            os.symlink({str(secret)!r}, "solution.py")
            os.symlink({str(secret)!r}, "data.txt")
            print("planted")
        """))
        first = sb.run_python("solution.py")
        assert first.stdout == b"planted\n", first
        second = sb.run_python("solution.py")  # now a link to the secret
        assert b"s3cr3t" not in second.stdout + second.stderr and second.returncode != 0, second
        sb.write("data.txt", "overwritten by the parent")
        assert os.path.islink(os.path.join(sb.dir, "solution.py"))
        assert not os.path.islink(os.path.join(sb.dir, "data.txt"))
    assert secret.read_text() == "s3cr3t-token"


def test_closing_its_pipes_does_not_end_the_watch():
    r = run("""
        import os
        os.close(1)
        os.close(2)
        while True:
            pass
    """, limits=Limits(cpu_s=1, wall_s=10, memory_mb=512))
    assert r.timed_out and "CPU limit" in r.notes[0], r
    r = run("""
        import os, time
        os.close(1)
        os.close(2)
        time.sleep(0.3)
        os._exit(3)
    """)
    assert r.returncode == 3 and not r.timed_out, r


def _children_of(pid: int) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if int(Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(name))
            except (OSError, IndexError, ValueError):
                pass
    return found


def _cwd(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def test_programs_die_with_a_killed_verifier(tmp_path):
    """SIGKILL the process running a sandbox: its sleeping program (a child of the verifier's zygote) and the zygote
    must not outlive it."""
    script = textwrap.dedent("""
        from factory.verify.rewards.sandbox import Sandbox, Limits
        with Sandbox(Limits(cpu_s=5, wall_s=600)) as sb:
            sb.write("solution.py", "import os, time\\nprint(os.getpid(), flush=True)\\ntime.sleep(600)")
            sb.run_python("solution.py")
    """)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    verifier = subprocess.Popen([sys.executable, "-c", script], env=env)
    deadline = time.monotonic() + 30
    zygote = program = None
    while time.monotonic() < deadline and program is None:
        for z in _children_of(verifier.pid):
            zygote, kids = z, _children_of(z)  # the program, and the zygote's idle pre-forked blanks (cwd /)
            runs = [k for k in kids if _cwd(k).startswith(tempfile.gettempdir())]
            program = runs[0] if runs else None
        time.sleep(0.05)
    blanks = [k for k in _children_of(zygote) if k != program]
    assert program is not None, "the sandboxed program never started"
    time.sleep(0.3)  # let it reach its sleep
    verifier.kill()
    verifier.wait()
    end = time.monotonic() + 5
    while time.monotonic() < end and any(_alive(p) for p in [program, zygote, *blanks]):
        time.sleep(0.05)
    assert not _alive(program), "the program outlived the verifier"
    assert not _alive(zygote), "the zygote outlived the verifier"
    assert not any(_alive(p) for p in blanks), "a pre-forked child outlived the verifier"
