"""The reference values of trainer/src/quality.rs's `ssim_matches_scikit_image` test.

scikit-image's SSIM (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03, mean
over the positions where the window fits) on two synthetic images per size, made with the same
float32 arithmetic as the test. Run: `python3 bench/ssim_reference.py` in a venv with scikit-image
and NumPy (PyPI); not needed by the tests.
"""
import numpy as np
from skimage.metrics import structural_similarity as ssim
def pair(w, h):
    y, x = np.mgrid[0:h, 0:w]
    a = (((x * 7 + y * 13) % 17).astype(np.float32) / np.float32(16.0))
    b = (((x * x + 3 * y) % 11).astype(np.float32) / np.float32(10.0)) * np.float32(0.5) + a * np.float32(0.5)
    return a, b
for (w, h) in [(28, 28), (40, 30)]:
    a, b = pair(w, h)
    v = ssim(a.astype(np.float64), b.astype(np.float64), gaussian_weights=True, sigma=1.5,
             use_sample_covariance=False, data_range=1.0)
    print(w, h, repr(v))
