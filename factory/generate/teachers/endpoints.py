"""Several OpenAI-compatible endpoints behind one teacher: least-loaded routing, health, failover.

A 671B R1 served on several nodes, several `vllm serve` replicas, or one `--data-parallel-size` server are all
one `teacher:` block with `base_urls: [...]`. Each request goes to the healthy endpoint with the fewest requests in
flight; an endpoint that fails (connection refused or reset, timeout, 5xx) is benched for a cooldown that doubles
while it keeps failing, and the request is retried at once on another one (counted as a failover).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class Endpoint:
    url: str
    inflight: int = 0
    failures: int = 0          # consecutive
    errors: int = 0            # in all
    down_until: float = 0.0

    def healthy(self, now: float) -> bool:
        return now >= self.down_until


@dataclass
class Endpoints:
    """The routing table; used from one asyncio loop, so it needs no lock."""

    urls: list[str]
    cooldown_s: float = 1.0
    max_cooldown_s: float = 60.0
    failovers: int = 0
    table: list[Endpoint] = field(init=False)

    def __post_init__(self) -> None:
        self.table = [Endpoint(u.rstrip("/")) for u in self.urls]

    def pick(self, exclude: Endpoint | None = None) -> tuple[Endpoint, float]:
        """(endpoint, seconds to wait before using it): the least-loaded healthy one, else the soonest back."""
        now = time.monotonic()
        healthy = [e for e in self.table if e.healthy(now) and e is not exclude] or \
                  [e for e in self.table if e.healthy(now)]
        if healthy:
            return min(healthy, key=lambda e: e.inflight), 0.0
        soonest = min(self.table, key=lambda e: e.down_until)
        return soonest, max(0.0, soonest.down_until - now)

    def succeeded(self, ep: Endpoint) -> None:
        ep.failures = 0
        ep.down_until = 0.0

    def failed(self, ep: Endpoint) -> None:
        ep.failures += 1
        ep.errors += 1
        if len(self.table) > 1:  # a lone endpoint is never benched: the caller's backoff already waits
            ep.down_until = time.monotonic() + min(self.cooldown_s * 2 ** (ep.failures - 1), self.max_cooldown_s)

    def has_other_healthy(self, ep: Endpoint) -> bool:
        now = time.monotonic()
        return any(e is not ep and e.healthy(now) for e in self.table)

    def stats(self) -> dict:
        return {"endpoints": len(self.table), "failovers": self.failovers,
                "endpoint_errors": {e.url: e.errors for e in self.table if e.errors}}
