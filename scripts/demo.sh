#!/usr/bin/env bash
# The main job: train the convolutional VAE on the bundled MNIST, export it (ONNX + int8 q8), and
# generate digits from latent vectors with the edge runtime. Outputs go to runs/ and out/.
#   EPOCHS=5 scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
EPOCHS=${EPOCHS:-5}

cargo build --release -p trainer -p exporter -p edge-runtime
target/release/trainer train conv-vae --epochs "$EPOCHS" --out runs/conv-vae
target/release/trainer pictures runs/conv-vae

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

# A 10x10 walk over the 2-d latent plane (z0 and z1 from -2 to 2) as one contact sheet, 16 samples
# of the prior, and a morph; then the same 5x5 corner of the plane as single digit files.
edge=target/release/edge
model=out/conv-vae/decoder.onnx
$edge generate --model $model --grid 10 --span 2 --sheet out/conv-vae/latent_grid.png
$edge generate --model $model --random 16 --seed 1 --sheet out/conv-vae/samples.png
$edge generate --model $model --morph -1.5,1 1.5,-1 --steps 10 --sheet out/conv-vae/morph.png
$edge generate --model $model --grid 5 --span 1.5 --out out/conv-vae/digit.png
echo "generated digits: out/conv-vae/{latent_grid,samples,morph}.png and out/conv-vae/digit_*.png"
