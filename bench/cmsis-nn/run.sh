#!/usr/bin/env bash
# CMSIS-NN's int8 kernels on the firmware's decoder shapes, under QEMU mps2-an386 (Cortex-M4F),
# counted the way `firmware/qemu/measure.sh` counts our decoder (see decoder.c).
#
#   bench/cmsis-nn/run.sh CMSIS_NN_DIR [OPT]
#
# CMSIS_NN_DIR is a checkout of Arm's CMSIS-NN (its Include/ and Source/); OPT is the C
# optimisation level (default -O3; CMSIS-NN's own CMake builds use -Ofast). Needs
# gcc-arm-none-eabi, libnewlib-arm-none-eabi (its full, not nano, memcpy: nano's copies bytes) and qemu-system-arm. Builds two seeds of
# pseudo-random weights to show the counts do not depend on the values. Benchmark only: never
# run in CI.
set -euo pipefail
cmsis=$(realpath "${1:?usage: run.sh CMSIS_NN_DIR [OPT]}")
opt=${2:--O3}
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/cmsis-nn.XXXXXX")
flags=(-mcpu=cortex-m4 -mthumb -mfloat-abi=hard -mfpu=fpv4-sp-d16 "$opt" -ffunction-sections
    -fdata-sections -I"$cmsis/Include")

# The integer kernels (the float ones need a half-float unit the M4 lacks).
objs=()
for src in "$cmsis"/Source/*/*.c; do
    case $src in *_f16.c | *_f32.c) continue ;; esac
    obj=$work/$(basename "$src" .c).o
    arm-none-eabi-gcc "${flags[@]}" -c "$src" -o "$obj"
    objs+=("$obj")
done
arm-none-eabi-ar rcs "$work/libcmsis-nn.a" "${objs[@]}"

for seed in 1 2; do
    elf=$work/decoder-$seed.elf
    arm-none-eabi-gcc "${flags[@]}" -DSEED="${seed}u" -nostartfiles \
        -T "$here/link.ld" -Wl,--gc-sections "$here/decoder.c" "$work/libcmsis-nn.a" -o "$elf"
    qemu-system-arm -cpu cortex-m4 -machine mps2-an386 -nographic -icount shift=0 \
        -semihosting-config enable=on,target=native -kernel "$elf"
done
echo "flash and RAM of the seed-2 build (text+rodata, data+bss):"
arm-none-eabi-size "$work/decoder-2.elf"
echo "outputs in $work"
