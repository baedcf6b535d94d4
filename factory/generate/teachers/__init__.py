"""Teacher backends behind one protocol (`factory.generate.teachers.base.Teacher`); stages never import vLLM
directly."""
from __future__ import annotations

from factory.core.config import ExecutorConfig
from factory.generate.config import OpenAITeacherConfig, SamplingConfig, TeacherConfig, VLLMTeacherConfig
from factory.generate.teachers.base import GenRequest, GenResult, GenSample, Teacher, TeacherError


def make_teacher(cfg: TeacherConfig, sampling: SamplingConfig, executor: ExecutorConfig | None = None) -> Teacher:
    """The teacher of a config; with `executor.kind: ray` the vLLM engine runs as replicas on the cluster."""
    if isinstance(cfg, VLLMTeacherConfig):
        from factory.generate.teachers.vllm_offline import VLLMTeacher, sampling_params

        try:  # refuse bad sampling params before spending a minute starting the engine
            sampling_params(sampling)
        except Exception as exc:
            raise TeacherError(f"sampling: {exc}") from exc
        if executor is not None and executor.kind == "ray":
            from factory.generate.teachers.ray_replicas import RayTeacher

            return RayTeacher(cfg, executor, seed=sampling.seed)
        return VLLMTeacher(cfg, seed=sampling.seed)
    if isinstance(cfg, OpenAITeacherConfig):
        from factory.generate.teachers.openai_server import OpenAITeacher

        return OpenAITeacher(cfg)
    raise TeacherError(f"unknown teacher backend {cfg!r}")


__all__ = ["GenRequest", "GenResult", "GenSample", "Teacher", "TeacherError", "make_teacher"]
