#!/usr/bin/env bash
# Creates (or reuses) a virtual environment and installs labelsmooth into it, editable.
#
#   bash scripts/install.sh [EXTRAS]        e.g. bash scripts/install.sh study,dev
#
# torch is installed first, by hand, so that a machine without a GPU never downloads the
# several GB of CUDA packages that a plain `torch` requirement pulls from PyPI:
#   * torch already importable in the venv  -> kept as it is;
#   * an NVIDIA GPU (nvidia-smi works)       -> torch==$TORCH_VERSION from the default index;
#   * no GPU                                 -> a local CPU wheel if pip's find-links has one,
#                                               else PyTorch's CPU index ($TORCH_CPU_INDEX).
# Environment: VENV (default .venv), PYTHON (default python3), TORCH_VERSION (default 2.13.0).
set -euo pipefail

extras=${1:-}
venv=${VENV:-.venv}
python=${PYTHON:-python3}
torch_version=${TORCH_VERSION:-2.13.0}
cpu_index=${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}

if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
py="$venv/bin/python"
pip=("$py" -m pip --disable-pip-version-check)

if "$py" -c "import torch" 2>/dev/null; then
    echo "install.sh: keeping torch $("$py" -c 'import torch; print(torch.__version__)')"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "install.sh: GPU found, installing torch==$torch_version (CUDA build)"
    "${pip[@]}" install "torch==$torch_version"
elif "${pip[@]}" install --no-index --no-deps "torch==$torch_version" >/dev/null 2>&1; then
    # A local CPU wheel was found through pip's find-links; now fetch its dependencies.
    echo "install.sh: no GPU, installed the local CPU build of torch==$torch_version"
    "${pip[@]}" install "torch==$torch_version"
else
    echo "install.sh: no GPU, installing torch==$torch_version from the CPU index"
    "${pip[@]}" install "torch==$torch_version" --index-url "$cpu_index" \
        --extra-index-url https://pypi.org/simple
fi

if [ -n "$extras" ]; then
    "${pip[@]}" install -e ".[$extras]"
else
    "${pip[@]}" install -e .
fi
