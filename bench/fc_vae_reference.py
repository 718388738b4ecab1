#!/usr/bin/env python3
"""The lesson's FC VAE trained in PyTorch with Keras' defaults: a reference for its 35.7 bar.

    python3 -m venv /tmp/torch && /tmp/torch/bin/pip install torch numpy   # ~5 GB with CUDA libs
    /tmp/torch/bin/python bench/fc_vae_reference.py --epochs 50 --seed 42

The model and training of the Keras `variational_autoencoder.py` example the lesson follows:
784-512-(mean, log-variance) | 2-512-784, ReLU, sigmoid output, loss = squared error summed over
the 784 pixels + KL, Adam at 1e-3 (Keras' epsilon 1e-7), batch 128, the training set shuffled
every epoch, Glorot-uniform weights and zero biases (Keras' `Dense` defaults; `--init torch` for
PyTorch's). Each epoch prints the training loss (mean over the epoch's batches, as Keras prints
it) and two test losses on the official 10,000 test images:

- `sampled`: the decoder fed one sample of each image's posterior, as Keras' `val_loss` is
  computed for this model (its sampling layer stays on at evaluation);
- `mean`: the decoder fed the posterior mean, as `trainer train` and `trainer eval` report
  their test loss.

`--final-lr` adds the trainer's half-cosine schedule from `--lr` to it, step by step.
Benchmark only: never run in CI.
"""
import argparse
import gzip
import math
import os
import time

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

import torch_side_by_side

HERE = os.path.dirname(os.path.abspath(__file__))
MNIST = os.path.join(HERE, "..", "data", "mnist")


def images(split):
    with gzip.open(os.path.join(MNIST, f"{split}-images-idx3-ubyte.gz")) as f:
        raw = f.read()
    magic, n, rows, cols = np.frombuffer(raw[:16], dtype=">u4")
    assert magic == 2051, f"bad IDX magic {magic:#x}"
    pixels = np.frombuffer(raw[16:], dtype=np.uint8).reshape(n, rows * cols)
    return torch.from_numpy(pixels.astype(np.float32) / 255.0)


class FcVae(torch_side_by_side.FcVae):
    """The layers of `torch_side_by_side.py`'s FC VAE (the trainer's fc-vae), initialised as
    `init` says."""

    def __init__(self, init):
        super().__init__()
        if init == "keras":
            for layer in self.modules():
                if isinstance(layer, nn.Linear):
                    nn.init.xavier_uniform_(layer.weight)
                    nn.init.zeros_(layer.bias)

    def losses(self, x, sample):
        """Per-image (total, reconstruction, KL)."""
        h = F.relu(self.hidden(x))
        mean, log_var = self.mean(h), self.log_var(h)
        z = mean + torch.exp(0.5 * log_var) * torch.randn_like(mean) if sample else mean
        out = torch.sigmoid(self.dec_out(F.relu(self.dec_hidden(z))))
        reconstruction = ((out - x) ** 2).sum(1)
        kl = -0.5 * (1 + log_var - mean**2 - log_var.exp()).sum(1)
        return reconstruction + kl, reconstruction, kl


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--final-lr", type=float, default=None)
    p.add_argument("--eps", type=float, default=1e-7, help="Adam's epsilon (Keras: 1e-7)")
    p.add_argument("--init", choices=["keras", "torch"], default="keras")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    train, test = images("train"), images("t10k")
    model = FcVae(args.init)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, eps=args.eps)
    steps_per_epoch = math.ceil(len(train) / args.batch_size)
    total_steps = steps_per_epoch * args.epochs
    step = 0
    print(vars(args))
    for epoch in range(1, args.epochs + 1):
        start = time.time()
        model.train()
        order = torch.randperm(len(train))
        running = 0.0
        for first in range(0, len(train), args.batch_size):
            if args.final_lr is not None:
                t = step / max(total_steps - 1, 1)
                lr = args.final_lr + 0.5 * (args.lr - args.final_lr) * (1 + math.cos(math.pi * t))
                for group in opt.param_groups:
                    group["lr"] = lr
            x = train[order[first : first + args.batch_size]]
            loss = model.losses(x, sample=True)[0].mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            running += loss.item()
            step += 1
        model.eval()
        with torch.no_grad():
            sampled = model.losses(test, sample=True)
            mean = model.losses(test, sample=False)
        print(
            f"epoch {epoch:3}  train {running / steps_per_epoch:.4f}  "
            f"test sampled {sampled[0].mean():.4f} (rec {sampled[1].mean():.4f} "
            f"kl {sampled[2].mean():.3f})  test mean {mean[0].mean():.4f}  "
            f"{time.time() - start:.1f}s",
            flush=True,
        )


if __name__ == "__main__":
    main()
