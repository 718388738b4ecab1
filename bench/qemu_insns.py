#!/usr/bin/env python3
"""Counts the guest instructions a qemu-user run executed, from its `-d in_asm,exec,nochain` log.

    qemu-aarch64 -cpu cortex-a72 -L /usr/aarch64-linux-gnu -d in_asm,exec,nochain -D run.log \\
        target/aarch64-unknown-linux-gnu/release/edge bench --model denoiser.onnx --size 64x48 --runs 1
    python3 bench/qemu_insns.py run.log

Every translated block is listed once (`IN:` then one line per instruction) and every execution
of a block once (`Trace ...: host [flags/guest_pc/...]`, with chaining off so none is skipped):
the total is the sum over executions of the block's instruction count. Timing-free, so the
numbers do not depend on the machine running qemu. Benchmark only: never run in CI.
"""
import re
import sys

TRACE = re.compile(r"^Trace \d+: 0x[0-9a-f]+ \[[0-9a-f]+/([0-9a-f]+)/")
INSN = re.compile(r"^0x([0-9a-f]+):\s")


def count(path):
    sizes = {}
    executed = {}
    block_pc = None
    with open(path, errors="replace") as log:
        for line in log:
            if line.startswith("IN:"):
                block_pc = None
                continue
            m = INSN.match(line)
            if m:
                pc = int(m.group(1), 16)
                if block_pc is None:
                    block_pc = pc
                    sizes[pc] = 0
                sizes[block_pc] += 1
                continue
            m = TRACE.match(line)
            if m:
                block_pc = None
                pc = int(m.group(1), 16)
                executed[pc] = executed.get(pc, 0) + 1
    missing = sum(n for pc, n in executed.items() if pc not in sizes)
    total = sum(sizes.get(pc, 0) * n for pc, n in executed.items())
    return total, missing


if __name__ == "__main__":
    for path in sys.argv[1:]:
        total, missing = count(path)
        print(f"{path}: {total:,} guest instructions ({missing} block executions without a listing)")
