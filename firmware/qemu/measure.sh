#!/usr/bin/env bash
# Instruction counts, stack and memory footprint of the `decode` firmware on a QEMU board.
#
#   ./measure.sh [--board mps2-an386|microbit] MODEL.q8 LATENTS.f32
#
# Builds `decode` for the board (mps2-an386: Cortex-M4F, thumbv7em-none-eabihf, the default;
# microbit: Cortex-M0, thumbv6m-none-eabi, with MODEL.q8 built into flash), runs it on copies of
# the two files in a temporary directory under `qemu-system-arm -icount shift=0` with `--measure`
# on the semihosting command line, and prints:
#   - instructions per decode (SysTick ticks x 10^9 / CPU_HZ: under -icount shift=0 QEMU runs one
#     instruction per virtual nanosecond; the firmware checks this on a calibration loop of known
#     length, which is printed too), and per MAC;
#   - the stack high-water mark (the stack is painted at reset and scanned after the decodes);
#   - flash and static RAM, summed from the ELF's section headers with `readelf -S` (binutils):
#     flash = .vector_table + .text + .rodata + .data (its initial values), RAM = .data + .bss +
#     .uninit.
# Needs qemu-system-arm, defmt-print (`cargo install defmt-print`) and readelf. The decoded
# digits and frames stay in the temporary directory, whose path is printed.
set -euo pipefail

board=mps2-an386
if [[ ${1:-} == --board ]]; then
    board=${2:?--board needs a value}
    shift 2
fi
if [[ $# -ne 2 ]]; then
    sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
fi
model=$(realpath "$1")
latents=$(realpath "$2")

case $board in
mps2-an386)
    target=thumbv7em-none-eabihf
    qemu=(qemu-system-arm -cpu cortex-m4 -machine mps2-an386)
    ;;
microbit)
    target=thumbv6m-none-eabi
    qemu=(qemu-system-arm -machine microbit)
    ;;
*)
    echo "unknown board '$board' (mps2-an386 or microbit)" >&2
    exit 2
    ;;
esac

here=$(cd "$(dirname "$0")" && pwd)
# The microbit builds the model into flash (16 KiB of RAM cannot hold it): DECODE_MODEL names it.
(cd "$here" && DECODE_MODEL=$model cargo build --release --quiet --target "$target")
elf=$here/target/$target/release/decode

work=$(mktemp -d "${TMPDIR:-/tmp}/measure-$board.XXXXXX")
cp "$model" "$work/model.q8"
cp "$latents" "$work/latents.f32"
set +e
(cd "$work" && timeout --foreground 600 "${qemu[@]}" -nographic -icount shift=0 \
    -semihosting-config enable=on,target=native -kernel "$elf" -append --measure) \
    | defmt-print -e "$elf" >"$work/log.txt"
status=${PIPESTATUS[0]}
set -e
if [[ $status -ne 0 ]]; then
    cat "$work/log.txt" >&2
    echo "firmware exited with $status" >&2
    exit 1
fi

echo "board: $board ($target), outputs and log in $work"
if ! grep -q 'calibration' "$work/log.txt"; then
    # The firmware measures only with --measure on its command line (a warning in the log says
    # why it could not read it).
    echo "the firmware did not measure (no calibration line in $work/log.txt)" >&2
    exit 1
fi
grep -m1 'calibration' "$work/log.txt" | sed 's/^INFO  //'
awk '
/MACs per digit/ {
    for (i = 1; i <= NF; i++) if ($i == "MACs") macs = $(i - 1)
    for (i = 1; i <= NF; i++) if ($i == "with" && $(i + 1) == "folded") folded = substr($(i - 1), 2)
}
/^INFO  decode [0-9]+:/ {
    d = $4; r = $(NF - 1); n++; sum += d; rsum += r
    if (n == 1 || d < min) min = d
    if (n == 1 || d > max) max = d
}
/stack high-water/ { stack = $4; region = $6 }
END {
    if (n == 0) { print "no decode lines in the log" > "/dev/stderr"; exit 1 }
    printf "decodes: %d, %d MACs each (%d with folded weights)\n", n, macs, folded
    printf "instructions per decode: mean %.0f (min %d, max %d)\n", sum / n, min, max
    printf "instructions per MAC: %.2f (per folded MAC: %.2f)\n", sum / n / macs, sum / n / folded
    printf "instructions per render: mean %.0f\n", rsum / n
    printf "stack high-water: %d bytes (of a %d-byte stack region)\n", stack, region
}' "$work/log.txt"

# Section sizes: strip the "[ n]" column so that the fields line up, keep allocated sections.
text=0 data=0 bss=0
while read -r name _type _addr _off size _es flags _; do
    [[ $flags == *A* ]] || continue
    case $name in
    .vector_table | .text | .rodata) text=$((text + 16#$size)) ;;
    .data) data=$((data + 16#$size)) ;;
    .bss | .uninit) bss=$((bss + 16#$size)) ;;
    esac
done < <(readelf -S -W "$elf" | sed -n 's/^ *\[ *[0-9]*\] //p')
echo "flash: $((text + data)) bytes (text+rodata $text, data $data)"
echo "static RAM: $((data + bss)) bytes (data $data, bss $bss)"
