#!/usr/bin/env python3
"""Classical denoisers on the held-out natural images, the bar the camera-frame denoiser must beat.

For each held-out image (grayscale, as the Y plane of a camera frame) and each noise level sigma
(of 255): add Gaussian noise (seeded), round and clip to 8 bits as a camera frame would be, then
report the PSNR of the noisy frame, of the best Gaussian blur and of the best OpenCV
fastNlMeansDenoising over a small grid of their parameters (tuned on the very image: a generous
baseline), and fastNlMeans' time on a 640x480 frame.

    python3 -m venv /tmp/cv && /tmp/cv/bin/pip install opencv-python-headless numpy
    /tmp/cv/bin/python bench/denoise_baselines.py [data/natural]

Benchmark only: never run in CI.
"""
import sys
import time
from pathlib import Path

import cv2
import numpy as np

HELD_OUT = ["camera.png", "coins.png", "chelsea.png"]
SIGMAS = [15, 25, 50]


def psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255.0**2 / mse)


def gray(path):
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    # BT.601 luma, as a camera's Y plane (cv2 reads BGR).
    y = 0.114 * img[..., 0] + 0.587 * img[..., 1] + 0.299 * img[..., 2]
    return np.clip(np.round(y), 0, 255).astype(np.uint8)


def main():
    data = Path(sys.argv[1] if len(sys.argv) > 1 else "data/natural")
    rng = np.random.default_rng(0)
    print(f"opencv {cv2.__version__}, numpy {np.__version__}")
    print(f"{'image':<12} {'sigma':>5} {'noisy':>7} {'blur':>7} {'(s)':>5} {'nlmeans':>8} {'(h)':>4}")
    totals = {s: np.zeros(3) for s in SIGMAS}
    for name in HELD_OUT:
        clean = gray(data / name)
        for sigma in SIGMAS:
            noise = rng.normal(0, sigma, clean.shape)
            noisy = np.clip(np.round(clean + noise), 0, 255).astype(np.uint8)
            blur = max(
                (psnr(cv2.GaussianBlur(noisy, (0, 0), s), clean), s)
                for s in [0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5]
            )
            nlm = max(
                (psnr(cv2.fastNlMeansDenoising(noisy, None, h, 7, 21), clean), h)
                for h in [sigma * f for f in (0.6, 0.8, 1.0, 1.2)]
            )
            p = psnr(noisy, clean)
            totals[sigma] += [p, blur[0], nlm[0]]
            print(f"{name:<12} {sigma:>5} {p:>7.2f} {blur[0]:>7.2f} {blur[1]:>5} {nlm[0]:>8.2f} {nlm[1]:>4.0f}")
    for sigma in SIGMAS:
        t = totals[sigma] / len(HELD_OUT)
        print(f"{'mean':<12} {sigma:>5} {t[0]:>7.2f} {t[1]:>7.2f} {'':>5} {t[2]:>8.2f}")
    frame = np.clip(rng.normal(128, 40, (480, 640)), 0, 255).astype(np.uint8)
    cv2.setNumThreads(1)
    start = time.perf_counter()
    runs = 5
    for _ in range(runs):
        cv2.fastNlMeansDenoising(frame, None, 25, 7, 21)
    ms = (time.perf_counter() - start) / runs * 1000
    print(f"fastNlMeansDenoising 640x480, 1 thread: {ms:.1f} ms/frame ({1000 / ms:.1f} frames/s)")


if __name__ == "__main__":
    main()
