"""The cluster recipes (pipelines/cluster/*.sbatch) are valid bash and keep their contract with the factory.

A real single-node Slurm (Debian's munged + slurmctld + slurmd) runs here only in the machine's own network
namespace, where Ray would use the machine's non-loopback address; inside a loopback-only namespace (where the
Ray tests run) slurmctld and slurmd cannot resolve any address on this kernel. So the scripts are checked, not run."""
from __future__ import annotations

import re
import subprocess

import pytest

from factory.core.config import ExecutorConfig


@pytest.mark.parametrize("name", ["ray-slurm.sbatch", "serve-r1-2x8.sbatch"])
def test_the_cluster_recipes_are_valid_bash_and_slurm_jobs(repo, name):
    script = repo / "pipelines" / "cluster" / name
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    assert re.search(r"^#SBATCH --nodes=2$", text, re.M) and "scontrol show hostnames" in text
    assert "--block" in text and "wait" in text  # the Ray nodes live as long as the job's srun steps


def test_the_ray_recipe_runs_factory_against_the_cluster_it_started(repo):
    text = (repo / "pipelines" / "cluster" / "ray-slurm.sbatch").read_text()
    run = re.search(r'"\$FACTORY" run "\$PIPELINE" (.*) "\$@"', text).group(1)
    assert run == '--set executor.kind=ray --set executor.address="$ADDRESS"'
    assert ExecutorConfig(kind="ray", address="10.0.0.1:6379").address == "10.0.0.1:6379"


def test_the_r1_recipe_serves_tp8_pp2_over_ray(repo):
    text = (repo / "pipelines" / "cluster" / "serve-r1-2x8.sbatch").read_text()
    for flag in ("--tensor-parallel-size 8", "--pipeline-parallel-size 2", "--distributed-executor-backend ray",
                 "--reasoning-parser deepseek_r1"):
        assert flag in text
    assert '"$FACTORY" run "$PIPELINE" --set teacher.base_url="$URL"' in text
