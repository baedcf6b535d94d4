"""`factory mix` killed with SIGKILL in the middle of a build: nothing half-written is left as the mixture, and the
rerun gives exactly the rows of an uninterrupted build."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
from _mix_data import write_run

REPO = Path(__file__).resolve().parents[2]


def _mix(mix_yaml: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "factory", "mix", "-c", str(mix_yaml), "--out", str(out)],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _rows(folder: Path) -> list[dict]:
    return [r for p in sorted(folder.glob("part-*.parquet")) for r in pq.read_table(p).to_pylist()]


def test_sigkill_mid_build_then_rerun_equals_an_uninterrupted_build(tmp_path):
    write_run(tmp_path / "r1", "numina", 8_000, shards=4)
    write_run(tmp_path / "chat", "alpaca", 2_500, domains=("general",))
    mix_yaml = tmp_path / "mix.yaml"
    mix_yaml.write_text("mix:\n  seed: 11\n  shard_rows: 250\n  total: 10000\n  sources:\n"
                        "    - {path: r1, ratio: 0.75}\n    - {path: chat, ratio: 0.25}\n")
    whole = _mix(mix_yaml, tmp_path / "whole")
    assert whole.wait(timeout=300) == 0, whole.stderr.read()

    crashed = _mix(mix_yaml, tmp_path / "crashed")
    deadline = time.monotonic() + 120
    while not list((tmp_path / "crashed").glob(".mix.tmp-*/part-00003.parquet")):  # a few shards in
        assert crashed.poll() is None, "the build ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    os.kill(crashed.pid, signal.SIGKILL)
    crashed.wait(timeout=30)
    mix = tmp_path / "crashed" / "mix"  # the half-built folder is not the mixture: DIR/mix holds at most the
    assert not mix.exists() or [p.name for p in mix.iterdir()] == [".lock"]  # dead writer's lock file
    assert list((tmp_path / "crashed").glob(".mix.tmp-*"))

    rerun = _mix(mix_yaml, tmp_path / "crashed")
    assert rerun.wait(timeout=300) == 0, rerun.stderr.read()
    assert sorted(p.name for p in (tmp_path / "crashed").iterdir()) == ["mix"]  # the leftover was removed
    assert _rows(tmp_path / "crashed" / "mix") == _rows(tmp_path / "whole" / "mix")
    assert len(_rows(tmp_path / "whole" / "mix")) == 10_000


def test_a_second_mix_of_the_run_is_refused_while_one_holds_the_lock(tmp_path):
    """The test process is the mix in progress (it holds DIR/mix's lock, as a build does until its swap): another
    `factory mix` of the run exits 1 naming the holder and leaves the mixture and the build folders alone."""
    from factory.core.lock import stage_lock

    write_run(tmp_path / "r1", "numina", 40)
    mix_yaml = tmp_path / "mix.yaml"
    mix_yaml.write_text(f"name: m\nmix:\n  sources:\n    - {{name: r, path: {tmp_path / 'r1'}, count: 10}}\n")
    out = tmp_path / "out"
    (out / ".mix.tmp-999999").mkdir(parents=True)  # a dead build's folder: the refused mix must not sweep it
    with stage_lock(out / "mix"):
        proc = _mix(mix_yaml, out)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 1, err
        assert f"{out / 'mix'} is being written by another factory process (pid {os.getpid()} on host" in \
            " ".join(err.split())
        assert "Traceback" not in err
        assert (out / ".mix.tmp-999999").is_dir() and not any((out / "mix").glob("part-*"))
    assert not (out / "mix" / ".lock").exists()
    proc = _mix(mix_yaml, out)  # released: the next mix builds, and sweeps the dead build folder
    assert proc.wait(timeout=120) == 0, proc.stderr.read()
    assert len(_rows(out / "mix")) == 10 and not (out / ".mix.tmp-999999").exists()
