#!/usr/bin/env bash
# The main job: train the convolutional VAE on the bundled MNIST, export it (ONNX + int8 q8), and
# generate digits from latent vectors with the edge runtime. Outputs go to runs/ and out/.
#   EPOCHS=5 scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
EPOCHS=${EPOCHS:-5}

cargo build --release -p trainer -p exporter -p edge-runtime
target/release/trainer train --epochs "$EPOCHS" --out runs/conv-vae

if [ -z "${ORT_DYLIB_PATH:-}" ] && python3 -c 'import onnxruntime' 2>/dev/null; then
  ORT_DYLIB_PATH=$(python3 -c 'import onnxruntime, glob, os; print(sorted(glob.glob(os.path.join(os.path.dirname(onnxruntime.__file__), "capi", "libonnxruntime.so*")))[0])')
  export ORT_DYLIB_PATH
fi
if [ -n "${ORT_DYLIB_PATH:-}" ]; then
  target/release/exporter runs/conv-vae --out out/conv-vae
else
  echo "ONNX Runtime not found (pip install onnxruntime): exporting with the tract check only"
  target/release/exporter runs/conv-vae --out out/conv-vae --no-ort
fi

# A 5x5 walk over the 2-d latent plane.
args=()
for y in 1.5 0.75 0 -0.75 -1.5; do
  for x in -1.5 -0.75 0 0.75 1.5; do
    args+=("--latent=$x,$y")
  done
done
target/release/edge generate --model out/conv-vae/decoder.onnx "${args[@]}" --out out/conv-vae/digit.png
echo "generated digits: out/conv-vae/digit_*.png"
