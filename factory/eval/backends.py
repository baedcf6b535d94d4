"""Which backend evaluates a model: the offline vLLM engine (default) or an OpenAI-compatible server (`vllm serve`,
SGLang, a hosted API; one endpoint or several, through the generate stage's `OpenAITeacher`).

`eval.backend` is every model's default; a model's own `backend` block is laid over it (or replaces it when it
names another backend). The served model's name is `backend.model`, else the model's `path`.
"""
from __future__ import annotations

import json
from typing import TYPE_CHECKING

from pydantic import ValidationError

from factory.generate.config import OpenAITeacherConfig

if TYPE_CHECKING:
    from factory.eval.config import EvalConfig, EvalModel

BACKENDS = ("vllm", "openai")


def _merged(model: "EvalModel", ecfg: "EvalConfig") -> dict:
    default, own = dict(ecfg.backend), dict(model.backend or {})
    kind = own.get("backend", default.get("backend", "vllm"))
    return {**default, **own} if default.get("backend", "vllm") == kind else own


def server_config(model: "EvalModel", ecfg: "EvalConfig") -> OpenAITeacherConfig | None:
    """The server `model` is evaluated through, or None for the offline engine; ValueError naming the model."""
    merged = _merged(model, ecfg)
    kind = merged.get("backend", "vllm")
    if kind not in BACKENDS:
        raise ValueError(f"model '{model.name}': backend '{kind}' is not one of {', '.join(BACKENDS)}")
    if kind == "vllm":
        extra = sorted(set(merged) - {"backend"})
        if extra:
            raise ValueError(f"model '{model.name}': backend vllm takes no settings ({', '.join(extra)}); "
                             "engine settings go in eval.engine")
        return None
    if model.adapter is not None:
        raise ValueError(f"model '{model.name}': an adapter cannot be merged into a server's model; serve it "
                         "(e.g. vllm serve --lora-modules NAME=DIR) and name it in backend.model")
    merged.setdefault("model", model.path)
    if not merged.get("model"):
        raise ValueError(f"model '{model.name}': backend openai needs the served model's name (backend.model or path)")
    try:
        return OpenAITeacherConfig.model_validate(merged)
    except ValidationError as exc:
        problems = "; ".join(": ".join(filter(None, (".".join(map(str, e["loc"])), e["msg"].removeprefix(
            "Value error, ")))) for e in exc.errors())
        raise ValueError(f"model '{model.name}': backend: {problems}") from None


def served_weights(server: OpenAITeacherConfig) -> tuple[str, str]:
    """(key that groups models sharing one client, identity for the fingerprint). The endpoints' addresses are
    not part of the identity: the same model served elsewhere gives the same results."""
    key = "openai:" + json.dumps(server.model_dump(mode="json"), sort_keys=True)
    return key, f"openai:{server.model}:{server.api}"


def start_server_teacher(server: OpenAITeacherConfig):
    """The OpenAI-compatible client of `server` (it waits for an endpoint to answer)."""
    from factory.generate.teachers import TeacherError
    from factory.generate.teachers.openai_server import OpenAITeacher

    try:
        return OpenAITeacher(server)
    except TeacherError as exc:
        raise TeacherError(f"eval: server model {server.model} at {', '.join(server.urls)}: {exc}") from exc


def uses_chat_api(teacher) -> bool:
    """Whether prompts go to `teacher` as chat messages (the server applies its own chat template)."""
    cfg = getattr(teacher, "cfg", None)
    return isinstance(cfg, OpenAITeacherConfig) and cfg.api == "chat"
