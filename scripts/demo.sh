#!/usr/bin/env bash
# The main job: train the convolutional VAE on the bundled MNIST, export it (ONNX + int8 q8), and
# generate digits from latent vectors with the edge runtime; then train the camera-frame denoiser
# on the bundled photographs, export it, and denoise noisy copies of the held-out photographs with
# the edge runtime. Outputs go to runs/ and out/; a second demo replaces the first one's
# runs/conv-vae and runs/camera-denoiser (`trainer train` will not write over a run).
#   EPOCHS=5 CAMERA_EPOCHS=3 SHARDS=2 scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
EPOCHS=${EPOCHS:-5}
CAMERA_EPOCHS=${CAMERA_EPOCHS:-3}
# Both trainings split each batch into two shards trained at once (`trainer train --devices 2`,
# the cores shared between them) where there are two cores or more: ~1.1-1.7x faster on two
# cores than one batch on both (BENCHMARKS.md, "Data parallel on the CPU").
SHARDS=${SHARDS:-$(($(nproc 2>/dev/null || echo 1) >= 2 ? 2 : 1))}

cargo build --release -p trainer -p exporter -p edge-runtime
rm -rf runs/conv-vae runs/camera-denoiser
target/release/trainer train conv-vae --epochs "$EPOCHS" --devices "$SHARDS" --out runs/conv-vae
target/release/trainer pictures runs/conv-vae

if [ -z "${ORT_DYLIB_PATH:-}" ] && ORT_DYLIB_PATH=$(scripts/ort-dylib.sh 2>/dev/null); then
  export ORT_DYLIB_PATH
fi
export_run() {
  if [ -n "${ORT_DYLIB_PATH:-}" ]; then
    target/release/exporter "$1" --out "$2"
  else
    echo "ONNX Runtime not found (pip install onnxruntime): exporting with the tract check only"
    target/release/exporter "$1" --out "$2" --no-ort
  fi
}
export_run runs/conv-vae out/conv-vae

# A 10x10 walk over the 2-d latent plane (z0 and z1 from -2 to 2) as one contact sheet, 16 samples
# of the prior, and a morph; then a 5x5 grid over the plane's centre (-1.5 to 1.5) as single digit
# files.
edge=target/release/edge
model=out/conv-vae/decoder.onnx
$edge generate --model $model --grid 10 --span 2 --sheet out/conv-vae/latent_grid.png
$edge generate --model $model --random 16 --seed 1 --sheet out/conv-vae/samples.png
$edge generate --model $model --morph -1.5,1 1.5,-1 --steps 10 --sheet out/conv-vae/morph.png
$edge generate --model $model --grid 5 --span 1.5 --out out/conv-vae/digit.png
echo "generated digits: out/conv-vae/{latent_grid,samples,morph}.png and out/conv-vae/digit_*.png"

# The camera-frame denoiser: noisy copies (sigma 25 of 255) of the three held-out photographs,
# denoised, with the PSNR of both; then a raw 8-bit frame stream, as a camera pipe would feed it.
target/release/trainer train camera-denoiser --epochs "$CAMERA_EPOCHS" --devices "$SHARDS" \
  --out runs/camera-denoiser
target/release/trainer eval runs/camera-denoiser
target/release/trainer pictures runs/camera-denoiser
export_run runs/camera-denoiser out/camera-denoiser
denoiser=out/camera-denoiser/denoiser.onnx
$edge denoise --model $denoiser --add-noise 25 --out out/camera-denoiser/photos \
  data/natural/camera.png data/natural/coins.png data/natural/chelsea.png
head -c $((640 * 480 * 10)) /dev/urandom > out/camera-denoiser/random.y8
$edge denoise --model $denoiser --size 640x480 --format gray8 --threads 2 \
  --input out/camera-denoiser/random.y8 --out out/camera-denoiser/random-denoised.y8
echo "denoised photographs: out/camera-denoiser/photos/*.png (and *_noisy.png)"
