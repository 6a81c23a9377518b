#!/usr/bin/env bash
# The test suite (CPU; float64 reference checks, tiny shapes). Triton kernels run under TRITON_INTERPRET=1.
set -euo pipefail
cd "$(dirname "$0")/.."
export TRITON_INTERPRET=1
python -m pytest -q "$@"
