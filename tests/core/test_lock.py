"""One writer per stage folder: a real second process is refused at once, naming the holder's pid and host; the
kernel frees the lock of a writer killed with SIGKILL; start-up cleanup removes only dead writers' temp files; two
`run_generate` on one folder: the second is refused and the first's output equals a solo run."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from factory.core.lock import StageLocked, stage_lock
from factory.core.schema import load_schema
from factory.core.shards import StageDir, iter_stage_rows

TESTS = Path(__file__).resolve().parent.parent


def _spawn(code: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": f"{TESTS.parent}{os.pathsep}{TESTS}{os.pathsep}{TESTS / 'core'}",
           "FACTORY_PROGRESS": "0"}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if proc.poll() is not None:
            pytest.fail(f"the writer exited early: {proc.stderr.read()[-2000:]}")
        if time.time() > deadline:
            pytest.fail("timed out waiting for the writer")
        time.sleep(0.05)


HOLD = """
import sys, time
from factory.core.lock import acquire
acquire(sys.argv[1])
print("locked", flush=True)
time.sleep(120)
"""


def test_a_second_writer_is_refused_naming_the_holder_and_sigkill_frees_the_lock(tmp_path):
    folder = tmp_path / "verify"
    holder = _spawn(HOLD, str(folder))
    try:
        assert holder.stdout.readline().strip() == "locked"
        stage = StageDir(folder, "verify", load_schema("verdict"))
        with pytest.raises(StageLocked, match=rf"being written by another factory process \(pid {holder.pid} on "
                                              rf"host {socket.gethostname()}"):
            stage.prepare("fp", {}, {})
        assert not stage.manifest_path.exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    stage.prepare("fp", {}, {})  # the kernel released the dead writer's lock
    stage.release()


def test_start_up_cleanup_removes_only_temp_files_of_dead_writers(tmp_path):
    folder = tmp_path / "generate"
    folder.mkdir()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        live_tmp = folder / f".part-00001.parquet.tmp-{alive.pid}"
        dead_tmp = folder / f".part-00002.parquet.tmp-{dead.pid}"
        for tmp in (live_tmp, dead_tmp):
            tmp.write_bytes(b"half a shard")
        stage = StageDir(folder, "generate", load_schema("trace"))
        stage.prepare("fp", {}, {})
        stage.release()
        assert live_tmp.exists() and not dead_tmp.exists()
    finally:
        alive.kill()
        alive.wait()


def test_a_failed_start_removes_the_folders_it_created(tmp_path):
    with pytest.raises(ValueError), stage_lock(tmp_path / "run" / "curate"):
        raise ValueError("bad input")
    assert not (tmp_path / "run").exists()
    (tmp_path / "run" / "verify").mkdir(parents=True)
    (tmp_path / "run" / "verify" / "ledger.jsonl").write_text('{"unit": 0}\n')
    with pytest.raises(ValueError), stage_lock(tmp_path / "run" / "verify"):
        raise ValueError("later unit failed")
    assert (tmp_path / "run" / "verify" / "ledger.jsonl").exists()  # committed work stays


GENERATE = """
import sys, time
from pathlib import Path
from test_integrity import pipeline, teacher

class Slow:
    def __init__(self, inner):
        self.inner, self.model_id = inner, inner.model_id
    def tokenizer(self):
        return None
    def generate(self, requests, sampling):
        for result in self.inner.generate(requests, sampling):
            time.sleep(0.4)
            yield result
    def close(self):
        pass

from factory.generate.stage import run_generate
cfg = pipeline()
run_generate(cfg, Path(sys.argv[1]), teacher=Slow(teacher(cfg)))
"""


def _records(run: Path) -> list[tuple]:
    return sorted((r["prompt_id"], r["sample_idx"], r["completion"]) for r in iter_stage_rows(run / "generate"))


def test_two_generate_runs_on_one_folder_the_second_is_refused(tmp_path):
    from test_integrity import pipeline, teacher

    from factory.generate.stage import run_generate

    cfg = pipeline()
    solo = tmp_path / "solo"
    run_generate(cfg, solo, teacher=teacher(cfg))
    run = tmp_path / "run"
    first = _spawn(GENERATE, str(run))
    _wait_for(lambda: (run / "generate" / ".lock").exists() and (run / "generate" / ".lock").stat().st_size, first)
    with pytest.raises(StageLocked, match=rf"pid {first.pid} on host"):
        run_generate(cfg, run, teacher=teacher(cfg))
    _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err[-2000:]
    assert _records(run) == _records(solo)
    ledger = (run / "generate" / "ledger.jsonl").read_text().splitlines()
    assert len(ledger) == 3 and not list((run / "generate").glob(".*tmp*"))
    assert not (run / "generate" / ".lock").exists()  # a finished writer leaves no lock file
