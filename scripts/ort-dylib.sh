#!/usr/bin/env bash
# Prints the path of ONNX Runtime's shared library inside the onnxruntime Python package that
# scripts/deps.sh installed: in the system's Python or in target/ort-venv. Fails when neither
# has it.
set -euo pipefail
cd "$(dirname "$0")/.."
find='import onnxruntime, glob, os; print(sorted(glob.glob(os.path.join(os.path.dirname(onnxruntime.__file__), "capi", "libonnxruntime.so*")))[0])'
for python in python3 target/ort-venv/bin/python; do
  if path=$("$python" -c "$find" 2>/dev/null); then
    echo "$path"
    exit 0
  fi
done
echo "ONNX Runtime not found: scripts/deps.sh installs it" >&2
exit 1
