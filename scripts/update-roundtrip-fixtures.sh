#!/usr/bin/env bash
# Re-makes tests/fixtures/roundtrip: a conv VAE, a camera denoiser and a super-resolution AE
# trained for one short epoch
# (quality does not matter, only the graphs and weights), and their encoder, decoder (float, and
# int8 as QDQ ONNX and as the q8 blob), denoiser and upscaler as our exporter writes them. Run it when `the_fixtures_are_what_the_exporter_writes_today`
# (tests/tests/roundtrip.rs) says the exporter has changed; the round-trip tests then check the
# new files. Takes a minute on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet -p trainer -p exporter
fixtures=tests/fixtures/roundtrip
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
rm -rf "$fixtures"
mkdir -p "$fixtures"
target/release/trainer train conv-vae --epochs 1 --train-subset 2048 --test-subset 256 \
    --out "$fixtures/conv-vae"
target/release/trainer train camera-denoiser --epochs 1 --patches 512 --out "$fixtures/camera-denoiser"
target/release/trainer train super-res --epochs 1 --train-subset 2048 --test-subset 256 \
    --out "$fixtures/super-res"
# The runs' optimizer checkpoints are only for resuming, their lock files only while training:
# not needed here.
rm -f "$fixtures"/*/optimizer-*.bpk "$fixtures"/*/.train.lock
target/release/exporter "$fixtures/conv-vae" --out "$work/conv-vae" --no-ort
target/release/exporter "$fixtures/camera-denoiser" --out "$work/camera-denoiser" --no-ort
target/release/exporter "$fixtures/super-res" --out "$work/super-res" --no-ort
cp "$work/conv-vae/encoder.onnx" "$fixtures/conv_vae_encoder.onnx"
cp "$work/conv-vae/decoder.onnx" "$fixtures/conv_vae_decoder.onnx"
cp "$work/conv-vae/decoder_int8.onnx" "$fixtures/conv_vae_decoder_int8.onnx"
cp "$work/conv-vae/decoder.q8" "$fixtures/conv_vae_decoder.q8"
cp "$work/camera-denoiser/denoiser.onnx" "$fixtures/camera_denoiser.onnx"
cp "$work/super-res/upscaler.onnx" "$fixtures/super_res_upscaler.onnx"
ls -l "$fixtures"
