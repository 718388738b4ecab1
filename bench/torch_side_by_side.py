#!/usr/bin/env python3
"""Training throughput of the lesson's models in PyTorch next to our Burn trainer, same machine.

    python3 -m venv /tmp/torch && /tmp/torch/bin/pip install torch numpy   # ~5 GB with CUDA libs
    cargo build --release -p trainer
    /tmp/torch/bin/python bench/torch_side_by_side.py --trainer target/release/trainer

Runs `trainer bench FAMILY --batches N` and the identical model in PyTorch (same layers, same
batch size, Adam at 1e-3, the same loss, batches drawn from the bundled MNIST training images and
moved into a tensor every step, as the trainer does) in turn, `--rounds` times, and prints
images per second for each and the Burn / PyTorch ratio per round (the machine is shared: compare
ratios from one round). Both run with each thread count of `--threads` (PyTorch through
`torch.set_num_threads`, Burn's `flex` backend through its rayon pool's `RAYON_NUM_THREADS`; with
`--shards`, Burn at T > 1 threads trains T shards of each batch at once, `trainer bench --devices
T`). With `--gpu`, Burn trains on its wgpu backend (a trainer built with `--features wgpu`, run
with `--backend wgpu`) and PyTorch on CUDA, both reading the loss back every step (the trainer
checks it for NaN every step); `--threads` then sets only the CPU threads feeding them.
Benchmark only: never run in CI.
"""
import argparse
import gzip
import os
import re
import subprocess
import time

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
MNIST = os.path.join(HERE, "..", "data", "mnist", "train-images-idx3-ubyte.gz")


def mnist_images():
    with gzip.open(MNIST) as f:
        raw = f.read()
    magic, n, rows, cols = np.frombuffer(raw[:16], dtype=">u4")
    assert magic == 2051, f"bad IDX magic {magic:#x}"
    return np.frombuffer(raw[16:], dtype=np.uint8).reshape(n, 1, rows, cols)


class ConvAe(nn.Module):
    """The lesson's conv AE, as trainer/src/model/conv.rs builds it."""

    def __init__(self, code=8):
        super().__init__()
        self.enc = nn.ModuleList(
            [nn.Conv2d(1, 16, 3, padding=1), nn.Conv2d(16, 8, 3, padding=1), nn.Conv2d(8, code, 3, padding=1)]
        )
        self.dec1 = nn.Conv2d(code, 8, 3, padding=1)
        self.dec2 = nn.Conv2d(8, 8, 3, padding=1)
        self.dec3 = nn.Conv2d(8, 16, 3, padding=0)
        self.dec4 = nn.Conv2d(16, 1, 3, padding=1)

    def forward(self, x):
        for conv in self.enc:
            x = F.max_pool2d(F.relu(conv(x)), 2, ceil_mode=True)
        x = F.relu(self.dec1(x))
        x = F.relu(self.dec2(F.interpolate(x, scale_factor=2, mode="nearest")))
        x = F.relu(self.dec3(F.interpolate(x, scale_factor=2, mode="nearest")))
        return self.dec4(F.interpolate(x, scale_factor=2, mode="nearest"))

    def loss(self, images):
        return F.binary_cross_entropy_with_logits(self(images), images)


class DenseAe(nn.Module):
    """784-512-128-32-128-512-784 with ReLUs, BCE (trainer's dense-ae default)."""

    def __init__(self, latent=32, hidden=(512, 128)):
        super().__init__()
        widths = [784, *hidden, latent]
        self.enc = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths, widths[1:]))
        back = widths[::-1]
        self.dec = nn.ModuleList(nn.Linear(a, b) for a, b in zip(back, back[1:]))

    def loss(self, images):
        x = images.flatten(1)
        for layer in self.enc:
            x = F.relu(layer(x))
        for i, layer in enumerate(self.dec):
            x = layer(x)
            if i + 1 < len(self.dec):
                x = F.relu(x)
        return F.binary_cross_entropy_with_logits(x, images.flatten(1))


class FcVae(nn.Module):
    """784-512-(mean, log-var) / 2-512-784, loss MSE x 784 + KL (trainer's fc-vae)."""

    def __init__(self, latent=2, hidden=512):
        super().__init__()
        self.hidden = nn.Linear(784, hidden)
        self.mean = nn.Linear(hidden, latent)
        self.log_var = nn.Linear(hidden, latent)
        self.dec_hidden = nn.Linear(latent, hidden)
        self.dec_out = nn.Linear(hidden, 784)

    def loss(self, images):
        x = images.flatten(1)
        h = F.relu(self.hidden(x))
        mean, log_var = self.mean(h), self.log_var(h)
        z = mean + torch.exp(0.5 * log_var) * torch.randn_like(mean)
        out = torch.sigmoid(self.dec_out(F.relu(self.dec_hidden(z))))
        reconstruction = ((out - x) ** 2).sum(1).mean()
        kl = (-0.5 * (1 + log_var - mean**2 - log_var.exp()).sum(1)).mean()
        return reconstruction + kl


MODELS = {"conv-ae": ConvAe, "dense-ae": DenseAe, "fc-vae": FcVae}


def torch_rate(family, images, batches, batch_size, threads, gpu):
    torch.set_num_threads(threads)
    torch.manual_seed(42)
    device = torch.device("cuda" if gpu else "cpu")
    model = MODELS[family]().to(device)
    optim = torch.optim.Adam(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(42)
    start = None
    for step in range(batches + 2):
        if step == 2:
            start = time.perf_counter()
        idx = rng.integers(0, len(images), batch_size)
        batch = torch.from_numpy(images[idx].astype(np.float32) / 255.0).to(device)
        optim.zero_grad()
        loss = model.loss(batch)
        loss.backward()
        optim.step()
        if gpu:
            loss.item()
    if gpu:
        torch.cuda.synchronize()
    return batches * batch_size / (time.perf_counter() - start)


def burn_rate(trainer, family, batches, batch_size, threads, shards, gpu):
    command = [trainer, "bench", family, "--batches", str(batches), "--batch-size", str(batch_size)]
    if gpu:
        command += ["--backend", "wgpu"]
    elif shards and threads > 1:
        command += ["--devices", str(threads)]
    out = subprocess.run(
        command,
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "RAYON_NUM_THREADS": str(threads)},
    ).stdout
    for line in out.splitlines():
        fields = line.split()
        if fields and fields[0] == family:
            return float(fields[-1])
    raise RuntimeError(f"no {family} row in:\n{out}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trainer", default=os.path.join(HERE, "..", "target", "release", "trainer"))
    parser.add_argument("--families", default="conv-ae,fc-vae,dense-ae")
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", default="1,2", help="thread counts to time both at")
    parser.add_argument(
        "--shards",
        action="store_true",
        help="at T > 1 threads, Burn splits each batch into T shards, a thread each (--devices T)",
    )
    parser.add_argument(
        "--gpu", action="store_true", help="Burn on wgpu, PyTorch on CUDA (one thread count)"
    )
    args = parser.parse_args()
    if args.gpu and args.shards:
        parser.error("--shards splits batches over CPU threads; it does not go with --gpu")
    if args.gpu and not torch.cuda.is_available():
        parser.error("--gpu: this PyTorch sees no CUDA device")
    if args.gpu and "," in args.threads:
        parser.error("--gpu times one thread count: give --threads T")
    images = mnist_images()
    threads = [int(t) for t in args.threads.split(",")]
    where = f"GPU: {torch.cuda.get_device_name()}; " if args.gpu else ""
    print(f"{where}torch {torch.__version__}; batch {args.batch_size}, {args.batches} Adam steps; images/s")
    header = ["round", "family"]
    for t in threads:
        header += [f"burn {t}t", f"torch {t}t", f"burn/torch {t}t"]
    print(" ".join(f"{h:>14}" for h in header))
    for r in range(1, args.rounds + 1):
        for family in args.families.split(","):
            row = [str(r), family]
            for t in threads:
                burn = burn_rate(args.trainer, family, args.batches, args.batch_size, t, args.shards, args.gpu)
                torch_ = torch_rate(family, images, args.batches, args.batch_size, t, args.gpu)
                row += [f"{burn:.0f}", f"{torch_:.0f}", f"{burn / torch_:.2f}"]
            print(" ".join(f"{c:>14}" for c in row), flush=True)


if __name__ == "__main__":
    main()
