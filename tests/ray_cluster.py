"""A real multi-node Ray cluster on 127.0.0.1 for tests: a head node and a worker node, each its own raylet with
one CPU and a custom resource naming it, so replicas and tasks land on different raylets.

Each node runs as `ray start --block` in a process group of its own, so stopping the cluster ends exactly its
processes (`ray stop` would end every Ray process on the machine, other test sessions' too)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

RAY = str(Path(sys.executable).parent / "ray")
NODE_FLAGS = ["--num-cpus=1", "--object-store-memory=120000000", "--disable-usage-stats", "--block"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalCluster:
    def __init__(self, temp_dir: Path):
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "VLLM_LOGGING_LEVEL": "WARNING"}
        self.temp_dir = temp_dir
        self.nodes: list[subprocess.Popen] = []

    def _node(self, *args: str) -> None:
        log = open(self.temp_dir.parent / f"{self.temp_dir.name}-node{len(self.nodes)}.log", "wb")
        self.nodes.append(subprocess.Popen([RAY, "start", *args, *NODE_FLAGS], env=self.env, stdout=log,
                                           stderr=subprocess.STDOUT, start_new_session=True))

    def start(self, timeout_s: float = 120) -> str:
        self._node("--head", f"--port={self.port}", "--node-ip-address=127.0.0.1", "--include-dashboard=false",
                   '--resources={"head_node": 1}', f"--temp-dir={self.temp_dir}")
        self._wait_port(timeout_s)
        self._node(f"--address={self.address}", "--node-ip-address=127.0.0.1", '--resources={"worker_node": 1}')
        return self.address

    def _wait_port(self, timeout_s: float) -> None:
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if self.nodes[0].poll() is not None:
                raise RuntimeError(f"the Ray head node exited with {self.nodes[0].returncode}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"the Ray head node did not listen on {self.address} within {timeout_s} s")

    def wait_nodes(self, ray, count: int = 2, timeout_s: float = 120) -> None:
        deadline = time.time() + timeout_s
        while sum(n["Alive"] for n in ray.nodes()) < count:
            if time.time() > deadline:
                raise RuntimeError(f"{count} Ray nodes did not join within {timeout_s} s")
            time.sleep(0.5)

    def stop(self) -> None:
        for proc in reversed(self.nodes):
            for sig, wait_s in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
                try:
                    os.killpg(proc.pid, sig)
                    proc.wait(timeout=wait_s)
                    break
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    continue
