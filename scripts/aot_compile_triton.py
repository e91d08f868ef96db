"""Compiles the Triton kernels ahead of time for sm_80 and sm_90 on a machine without a GPU.

    .venv/bin/python scripts/aot_compile_triton.py [options of gpu_check]

A thin wrapper, kept for old habits: the logic lives in :mod:`labelsmooth.kernels.gpu_check`
(``python -m labelsmooth.kernels.gpu_check --help``), which compiles every launch configuration
the dispatchers can choose and exits 1 if one fails to compile, spills or overflows shared
memory.
"""

from __future__ import annotations

import sys

from labelsmooth.kernels.gpu_check import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
