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
    assert not (tmp_path / "crashed" / "mix").exists()  # the half-built folder is not the mixture
    assert list((tmp_path / "crashed").glob(".mix.tmp-*"))

    rerun = _mix(mix_yaml, tmp_path / "crashed")
    assert rerun.wait(timeout=300) == 0, rerun.stderr.read()
    assert sorted(p.name for p in (tmp_path / "crashed").iterdir()) == ["mix"]  # the leftover was removed
    assert _rows(tmp_path / "crashed" / "mix") == _rows(tmp_path / "whole" / "mix")
    assert len(_rows(tmp_path / "whole" / "mix")) == 10_000
