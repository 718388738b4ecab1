//! Image quality measures for reconstructions: PSNR and SSIM on images with pixels in `[0, 1]`.

/// `10 log10(1 / mse)`, for pixels in `[0, 1]` (infinite for a perfect match).
pub fn psnr(mse: f64) -> f64 {
    10.0 * (1.0 / mse).log10()
}

/// Side of SSIM's Gaussian window and its standard deviation (Wang et al., 2004).
const WINDOW: usize = 11;
const SIGMA: f64 = 1.5;

/// Mean structural similarity of `a` and `b` (`width x height`, row-major, pixels in `[0, 1]`):
/// an 11x11 Gaussian window (sigma 1.5) over the positions where it fits whole, `K1 = 0.01`,
/// `K2 = 0.03`. Images smaller than the window are compared as one window.
///
/// # Panics
/// Never; mismatched lengths give `NaN`.
pub fn ssim(a: &[f32], b: &[f32], width: usize, height: usize) -> f64 {
    if a.len() != b.len() || Some(a.len()) != width.checked_mul(height) || a.is_empty() {
        return f64::NAN;
    }
    let win = WINDOW.min(width).min(height);
    let weights: Vec<f64> = {
        let c = (win as f64 - 1.0) / 2.0;
        let w: Vec<f64> = (0..win)
            .map(|i| (-((i as f64 - c).powi(2)) / (2.0 * SIGMA * SIGMA)).exp())
            .collect();
        let total: f64 = w.iter().sum();
        w.into_iter().map(|v| v / total).collect()
    };
    let (ow, oh) = (width - win + 1, height - win + 1);
    // Separable filtering of the five maps: a, b, a^2, b^2, ab.
    let maps: [Vec<f64>; 5] = {
        let at = |v: &[f32], i: usize| v[i] as f64;
        [
            (0..a.len()).map(|i| at(a, i)).collect(),
            (0..a.len()).map(|i| at(b, i)).collect(),
            (0..a.len()).map(|i| at(a, i) * at(a, i)).collect(),
            (0..a.len()).map(|i| at(b, i) * at(b, i)).collect(),
            (0..a.len()).map(|i| at(a, i) * at(b, i)).collect(),
        ]
    };
    let filtered: Vec<Vec<f64>> = maps
        .iter()
        .map(|m| {
            let mut rows = vec![0.0; ow * height];
            for y in 0..height {
                for x in 0..ow {
                    rows[y * ow + x] = (0..win).map(|k| weights[k] * m[y * width + x + k]).sum();
                }
            }
            let mut out = vec![0.0; ow * oh];
            for y in 0..oh {
                for x in 0..ow {
                    out[y * ow + x] = (0..win).map(|k| weights[k] * rows[(y + k) * ow + x]).sum();
                }
            }
            out
        })
        .collect();
    let (c1, c2) = (0.01f64.powi(2), 0.03f64.powi(2));
    let total: f64 = (0..ow * oh)
        .map(|i| {
            let (ma, mb) = (filtered[0][i], filtered[1][i]);
            let va = filtered[2][i] - ma * ma;
            let vb = filtered[3][i] - mb * mb;
            let cov = filtered[4][i] - ma * mb;
            ((2.0 * ma * mb + c1) * (2.0 * cov + c2)) / ((ma * ma + mb * mb + c1) * (va + vb + c2))
        })
        .sum();
    total / (ow * oh) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against an independent implementation: scikit-image 0.26's `structural_similarity(a, b,
    /// gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0)` on the same
    /// images (made with the same f32 arithmetic in NumPy) gave these values
    /// (`bench/ssim_reference.py`).
    #[test]
    fn ssim_matches_scikit_image() {
        for (width, height, expected) in [
            (28, 28, 0.639_524_363_954_662_5),
            (40, 30, 0.627_642_973_746_206_8),
        ] {
            let (mut a, mut b) = (Vec::new(), Vec::new());
            for y in 0..height {
                for x in 0..width {
                    let p = ((x * 7 + y * 13) % 17) as f32 / 16.0;
                    a.push(p);
                    b.push(((x * x + 3 * y) % 11) as f32 / 10.0 * 0.5 + p * 0.5);
                }
            }
            let ours = ssim(&a, &b, width, height);
            assert!(
                (ours - expected).abs() < 1e-9,
                "{width}x{height}: {ours} vs {expected}"
            );
        }
    }

    #[test]
    fn ssim_is_one_for_equal_images_and_drops_with_noise() {
        let img: Vec<f32> = (0..28 * 28).map(|i| ((i * 7) % 29) as f32 / 29.0).collect();
        assert!((ssim(&img, &img, 28, 28) - 1.0).abs() < 1e-12);
        let mut rng = crate::rng::SplitMix64(1);
        let noisy: Vec<f32> = img
            .iter()
            .zip(rng.normals(img.len()))
            .map(|(&p, n)| (p + 0.2 * n).clamp(0.0, 1.0))
            .collect();
        let s = ssim(&img, &noisy, 28, 28);
        assert!(s < 0.9 && s > 0.0, "{s}");
        // A change of contrast keeps the structure: it scores above the noise.
        let shifted: Vec<f32> = img.iter().map(|&p| p * 0.8 + 0.1).collect();
        assert!(ssim(&img, &shifted, 28, 28) > s);
        assert!(ssim(&img, &img[1..], 28, 28).is_nan());
        assert_eq!(psnr(0.01), 20.0);
    }
}
