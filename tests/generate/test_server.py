"""The OpenAI-compatible teacher against a real vLLM server subprocess on 127.0.0.1, directly and through a real
fault-injecting HTTP proxy (429, 503, dropped connections), plus an unreachable server."""
from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from factory.config import PipelineConfig
from factory.core.shards import iter_stage_rows
from factory.generate.stage import run_generate
from factory.generate.teachers import TeacherError

pytestmark = [pytest.mark.server, pytest.mark.slow]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(vllm_server):
    """The session's real `vllm serve` subprocess (tests/conftest.py), shared with the judge's server tests."""
    return vllm_server


class FaultyProxy:
    """Forwards to the real server, but answers the first requests with the faults a busy API produces."""

    def __init__(self, upstream: str, faults: list[str]):
        self.faults = list(faults)
        self.lock = threading.Lock()
        self.seen = []
        target = upstream.split("//")[1].split("/")[0]
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _forward(self, method):
                body = self.rfile.read(int(self.headers.get("content-length", 0) or 0))
                with proxy.lock:
                    fault = proxy.faults.pop(0) if (proxy.faults and method == "POST") else None
                    proxy.seen.append(fault)
                if fault == "drop":
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.connection.close()
                    return
                if fault in ("429", "503", "500"):
                    self.send_response(int(fault))
                    self.send_header("content-length", "2")
                    self.end_headers()
                    self.wfile.write(b"{}")
                    return
                conn = http.client.HTTPConnection(target, timeout=300)
                conn.request(method, self.path, body=body or None, headers={"content-type": "application/json"})
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._forward("GET")

            def do_POST(self):
                self._forward("POST")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


def config(url: str, **teacher) -> PipelineConfig:
    return PipelineConfig.model_validate({
        "prompts": [{"kind": "arithmetic", "n": 5, "seed": 2}], "sampling": {"n": 2, "max_tokens": 24},
        "generate": {"shard_size": 2},
        "teacher": {"backend": "openai", "model": "smollm2", "base_url": url, "backoff_s": 0.05, **teacher}})


def test_chat_api_with_continued_think_prefill(server, tmp_path):
    counts = run_generate(config(server, concurrency=4), tmp_path)
    rows = list(iter_stage_rows(tmp_path / "generate", "trace"))
    assert counts["records_out"] == len(rows) == 10
    for r in rows:
        assert r["error"] is None and r["finish_reason"] in ("stop", "length")
        assert r["completion"].startswith("<think>\n") and r["completion_tokens"] > 0
        sent = json.loads(r["prompt_text"])
        assert sent[-1] == {"role": "assistant", "content": "<think>\n"} and sent[0]["role"] == "user"


def test_completions_api_templates_locally(server, tmp_path, embedded_dir):
    run_generate(config(server, api="completions", tokenizer=str(embedded_dir)), tmp_path)
    rows = list(iter_stage_rows(tmp_path / "generate", "trace"))
    assert len(rows) == 10 and all(r["prompt_text"].endswith("<|im_start|>assistant\n<think>\n") for r in rows)


def test_retries_through_429_503_and_dropped_connections(server, tmp_path):
    proxy = FaultyProxy(server, ["429", "503", "drop", "429", "500"])
    try:
        run_generate(config(proxy.url, concurrency=2, max_retries=4), tmp_path)
    finally:
        proxy.close()
    rows = list(iter_stage_rows(tmp_path / "generate", "trace"))
    assert len(rows) == 10 and all(r["error"] is None for r in rows)
    assert proxy.seen.count("429") == 2 and "drop" in proxy.seen


def test_failures_after_bounded_retries_are_recorded_not_dropped(server, tmp_path):
    proxy = FaultyProxy(server, ["503"] * 6)  # one prompt's request fails on every try (1 + 2 retries)
    try:
        counts = run_generate(config(proxy.url, concurrency=1, max_retries=2), tmp_path)
    finally:
        proxy.close()
    rows = list(iter_stage_rows(tmp_path / "generate", "trace"))
    failed = [r for r in rows if r["finish_reason"] == "error"]
    assert len(rows) == 10 and counts["extra"]["errors"] == len(failed) >= 2
    assert all("gave up after 3 tries: HTTP 503" in r["error"] for r in failed)


def test_unreachable_server_is_a_clear_error_and_leaves_nothing(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/v1"
    started = time.time()
    with pytest.raises(TeacherError, match=r"cannot reach the teacher server at .* after 3 tries"):
        run_generate(config(url, connect_retries=2), tmp_path)
    assert time.time() - started < 10 and not (tmp_path / "generate").exists()


def test_an_endpoint_killed_mid_run_fails_over_to_the_others(server, tmp_path):
    """Two endpoints (the server directly, and through a real forwarder process); the forwarder is killed with
    SIGKILL after the first commit: its requests in flight go to the other endpoint and the run finishes."""
    import signal
    from pathlib import Path

    forward = Path(__file__).resolve().parents[1] / "tcp_forward.py"
    port = free_port()
    target = server.split(":")[2].split("/")[0]
    forwarder = subprocess.Popen([sys.executable, str(forward), str(port), target],
                                 stdout=subprocess.PIPE, text=True)
    assert forwarder.stdout.readline().strip() == "listening"
    cfg = PipelineConfig.model_validate({
        "prompts": [{"kind": "arithmetic", "n": 12, "seed": 4}], "sampling": {"n": 2, "max_tokens": 48},
        "generate": {"shard_size": 1},
        "teacher": {"backend": "openai", "model": "smollm2", "base_urls": [f"http://127.0.0.1:{port}/v1", server],
                    "backoff_s": 0.05, "concurrency": 4}})
    ledger = tmp_path / "generate" / "ledger.jsonl"

    def kill_after_first_commit():
        deadline = time.time() + 120
        while time.time() < deadline and not (ledger.exists() and ledger.read_text().strip()):
            time.sleep(0.05)
        forwarder.send_signal(signal.SIGKILL)

    killer = threading.Thread(target=kill_after_first_commit, daemon=True)
    killer.start()
    try:
        counts = run_generate(cfg, tmp_path)
    finally:
        killer.join()
        forwarder.kill()
        forwarder.wait()
    rows = list(iter_stage_rows(tmp_path / "generate", "trace"))
    assert len(rows) == counts["records_out"] == 24 and all(r["error"] is None for r in rows)
    assert len({(r["prompt_id"], r["sample_idx"]) for r in rows}) == 24
    stats = counts["extra"]["teacher"]
    assert stats["endpoints"] == 2 and stats["endpoint_errors"] == {f"http://127.0.0.1:{port}/v1": stats["failovers"]}
    assert stats["failovers"] >= 1
