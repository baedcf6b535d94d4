"""The Ray executor on a real two-node local cluster: map units as Ray tasks, committed by the driver."""
from __future__ import annotations

import os

import pyarrow.parquet as pq
import pytest
from test_shards import TRACE, drop_odd, make_stage

from factory.config import PipelineConfig
from factory.core.config import ExecutorConfig
from factory.core.executor import LocalExecutor
from factory.core.ray_cluster import ExecutorError
from factory.core.ray_executor import RayExecutor
from factory.core.runner import run_map_stage

pytestmark = pytest.mark.ray
# A real two-node cluster runs only inside the loopback-only network namespace that test_ray_in_netns.py makes.
in_netns = pytest.mark.skipif(os.environ.get("FACTORY_LOOPBACK_NETNS") != "1",
                              reason="runs inside a loopback-only network namespace (tests/core/test_ray_in_netns.py)")


@in_netns
def test_map_stage_on_ray_equals_the_local_executor(tmp_path, ray_cluster):
    make_stage(tmp_path, units=4, k=4)
    common = dict(name="verify", in_dir=tmp_path / "generate", out_schema=TRACE, fn=drop_odd, config={},
                  in_schema="trace")
    executor = RayExecutor(ExecutorConfig(kind="ray", address=ray_cluster, tasks_in_flight=2))
    import ray
    import test_shards

    ray.cloudpickle.register_pickle_by_value(test_shards)  # the unit's function is defined in this test module
    assert executor.shares_filesystem is False  # the driver ships each input part; tasks never read the run folder
    on_ray = run_map_stage(out_dir=tmp_path / "ray", executor=executor, **common)
    local = run_map_stage(out_dir=tmp_path / "local", executor=LocalExecutor(1), **common)
    assert on_ray == local and on_ray["records_out"] == 8
    for part in sorted((tmp_path / "local").glob("part-*.parquet")):
        assert pq.read_table(part).equals(pq.read_table(tmp_path / "ray" / part.name))
    assert not list((tmp_path / "ray").glob(".*.tmp-*"))


def test_an_unreachable_cluster_is_a_clear_error_and_writes_nothing(tmp_path):
    from ray_cluster import free_port

    from factory.generate.stage import run_generate

    address = f"127.0.0.1:{free_port()}"
    cfg = PipelineConfig.model_validate({"prompts": [{"kind": "arithmetic", "n": 2}],
                                         "executor": {"kind": "ray", "address": address, "connect_timeout_s": 2}})
    with pytest.raises(ExecutorError, match=f"executor.address {address}: no Ray cluster answers there"):
        run_generate(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    with pytest.raises(ExecutorError, match="expected 'auto', 'local'"):
        RayExecutor(ExecutorConfig(kind="ray", address="nonsense"))
