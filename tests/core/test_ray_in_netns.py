"""The Ray tests, run inside a network namespace of their own that has only a loopback interface.

Ray turns 127.0.0.1 into the machine's routable address for its nodes; in a namespace whose only interface is
`lo`, that address is 127.0.0.1 itself, so a two-node cluster on one machine sends nothing past loopback."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]

INNER = ["tests/core/test_ray_executor.py", "tests/generate/test_ray_generate.py"]
FLAG = "FACTORY_LOOPBACK_NETNS"


def test_the_ray_suite_passes_in_a_loopback_only_namespace(repo):
    if os.environ.get(FLAG) == "1":
        pytest.skip("already inside the namespace")
    pytest.importorskip("ray")
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.skip("needs unshare and ip (util-linux, iproute2)")
    script = 'ip link set lo up && exec "$0" -m pytest -q -p no:cacheprovider -rs "$@"'
    cmd = ["unshare", "--net", "sh", "-c", script, sys.executable, *INNER]
    proc = subprocess.run(cmd, cwd=repo, env={**os.environ, FLAG: "1"}, capture_output=True, text=True,
                          timeout=1800)
    tail = proc.stdout[-6000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, tail
    summary = proc.stdout.strip().splitlines()[-1]
    assert "passed" in summary and "skipped" not in summary and "failed" not in summary, tail
