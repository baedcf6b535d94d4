"""Joining a Ray cluster for the `ray` executor: one connection per process, a clear error for a wrong address.

Ray is an optional dependency (`pip install 'factory[ray]'`); only this module and the Ray executor and teacher
import it, and only when `executor.kind: ray`.
"""
from __future__ import annotations

import os
import socket

from factory.core.config import ExecutorConfig


class ExecutorError(RuntimeError):
    """The executor cannot run: Ray is missing or the cluster cannot be reached."""


_joined: str | None = None  # the address this process joined


def import_ray():
    try:
        import ray
    except ImportError as exc:
        raise ExecutorError("executor.kind=ray needs Ray: pip install 'factory[ray]'") from exc
    return ray


def _check_reachable(address: str, timeout_s: float) -> None:
    """Fail in seconds, naming the address, when nothing listens there (ray.init would wait much longer)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ExecutorError(f"executor.address {address!r}: expected 'auto', 'local', 'host:port' or 'ray://host:port'")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise ExecutorError(f"executor.address {address}: no Ray cluster answers there ({exc}). Start one with "
                            f"`ray start --head --port {port}` or correct the address.") from None


def connect(cfg: ExecutorConfig):
    """Join (or with address 'local', start) the cluster once per process; returns the `ray` module."""
    global _joined
    ray = import_ray()
    if ray.is_initialized() and _joined == cfg.address:
        return ray
    if cfg.address not in ("auto", "local"):
        _check_reachable(cfg.address, cfg.connect_timeout_s)
    if ray.is_initialized():  # joined another cluster earlier in this process
        ray.shutdown()
    # auto: the cluster RAY_ADDRESS or a `ray start` on this node names, else a new one here; local: always new.
    address = {"auto": None}.get(cfg.address, cfg.address)
    # Workers see what the driver sees of these, so replicas start as quiet as a local engine.
    env = {k: v for k, v in os.environ.items() if k.startswith(("VLLM_", "FACTORY_", "HF_", "TOKENIZERS_"))}
    env.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    try:
        ray.init(address=address, logging_level="WARNING", configure_logging=True, log_to_driver=cfg.worker_logs,
                 include_dashboard=False if address in (None, "local") else None, runtime_env={"env_vars": env})
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ExecutorError(f"executor.address {cfg.address}: could not join the Ray cluster: {exc}") from None
    _joined = cfg.address
    return ray


def join_cluster(cfg: ExecutorConfig | None) -> None:
    """Connect now when the pipeline runs on Ray (no-op for the local executor): a stage calls it before it
    writes anything, so a wrong address leaves no partial output."""
    if cfg is not None and cfg.kind == "ray":
        connect(cfg)


def cluster_gpus() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0))


def cluster_cpus() -> float:
    import ray

    return float(ray.cluster_resources().get("CPU", 1))
