//! Principal component analysis, the linear baseline an autoencoder must beat: fit on the
//! training images, reconstruct the test images from their first `k` components, and compare the
//! pixel MSE with the autoencoder's at the same latent size.
//!
//! The covariance is one Burn matrix product (`X^T X`, 60,000 x 784 images in a few seconds on the
//! CPU); its leading eigenvectors come from orthogonal (subspace) iteration in f64.

use anyhow::{Context, bail};
use burn::prelude::*;

use crate::data::{Mnist, PIXELS};

/// A fitted PCA: the mean image and the leading principal directions.
#[derive(Debug, Clone)]
pub struct Pca {
    dim: usize,
    mean: Vec<f64>,
    /// `k` unit vectors of length `dim`, by decreasing variance.
    components: Vec<Vec<f64>>,
}

impl Pca {
    /// Fits `k` components to `rows` (`n x dim`, row-major) on `device`.
    ///
    /// # Errors
    /// When `rows` is not `n x dim` with `n >= 2`, or `k` is 0, more than `dim`, or more than
    /// `n - 1` (`n` centred rows span at most `n - 1` directions: further components would be
    /// arbitrary directions of no variance).
    pub fn fit(rows: &[f32], dim: usize, k: usize, device: &Device) -> anyhow::Result<Pca> {
        if dim == 0 || !rows.len().is_multiple_of(dim) || rows.len() / dim < 2 {
            bail!(
                "PCA needs at least 2 rows of {dim} values, got {} values",
                rows.len()
            );
        }
        if k == 0 || k > dim {
            bail!("cannot fit {k} components to {dim}-dimensional data");
        }
        let n = rows.len() / dim;
        if k > n - 1 {
            bail!(
                "cannot fit {k} components to {n} rows: they span at most {} directions",
                n - 1
            );
        }
        let x = Tensor::<1>::from_floats(rows, device).reshape([n, dim]);
        let mean_t = x.clone().mean_dim(0); // [1, dim]
        let centred = x - mean_t.clone();
        let covariance = centred.clone().transpose().matmul(centred) / (n as f32 - 1.0);
        let to_vec = |t: Tensor<2>| -> anyhow::Result<Vec<f64>> {
            Ok(t.into_data()
                .try_to_vec::<f32>()
                .map_err(|e| anyhow::anyhow!("{e:?}"))?
                .into_iter()
                .map(f64::from)
                .collect())
        };
        let mean = to_vec(mean_t)?;
        let cov = to_vec(covariance)?;
        Ok(Pca {
            dim,
            mean,
            components: leading_eigenvectors(&cov, dim, k),
        })
    }

    /// Fits `k` components to the images of `data`.
    pub fn fit_images(data: &Mnist, k: usize, device: &Device) -> anyhow::Result<Pca> {
        let rows: Vec<f32> = (0..data.len())
            .flat_map(|i| data.image(i).iter().map(|&p| p as f32 / 255.0))
            .collect();
        Pca::fit(&rows, PIXELS, k, device).context("fitting PCA to the images")
    }

    /// Number of fitted components.
    pub fn components(&self) -> usize {
        self.components.len()
    }

    /// Mean squared error per value of reconstructing `rows` (`n x dim`) from their first `k`
    /// components (`k` at most [`Pca::components`]).
    pub fn reconstruction_mse(&self, rows: &[f32], k: usize) -> f64 {
        let k = k.min(self.components.len());
        let (mut sum, mut count) = (0.0, 0usize);
        let mut centred = vec![0.0; self.dim];
        for row in rows.chunks_exact(self.dim) {
            for ((c, &v), m) in centred.iter_mut().zip(row).zip(&self.mean) {
                *c = v as f64 - m;
            }
            let mut residual = centred.clone();
            for axis in &self.components[..k] {
                let z: f64 = axis.iter().zip(&centred).map(|(a, c)| a * c).sum();
                for (r, a) in residual.iter_mut().zip(axis) {
                    *r -= z * a;
                }
            }
            sum += residual.iter().map(|r| r * r).sum::<f64>();
            count += self.dim;
        }
        sum / count.max(1) as f64
    }
}

/// The `k` leading eigenvectors of the symmetric `dim x dim` matrix `a` (row-major), by
/// orthogonal iteration: `V <- orthonormalise(A V)` until the subspace settles, then the vectors
/// are sorted by their Rayleigh quotients.
fn leading_eigenvectors(a: &[f64], dim: usize, k: usize) -> Vec<Vec<f64>> {
    // A fixed, well-spread start (no randomness needed: it only has to touch every direction).
    let mut v: Vec<Vec<f64>> = (0..k)
        .map(|j| {
            (0..dim)
                .map(|i| (((i * 7919 + j * 104_729) % 1000) as f64 / 1000.0) - 0.5)
                .collect()
        })
        .collect();
    orthonormalise(&mut v);
    let multiply = |x: &[f64]| -> Vec<f64> {
        a.chunks_exact(dim)
            .map(|row| row.iter().zip(x).map(|(p, q)| p * q).sum())
            .collect()
    };
    for _ in 0..500 {
        let mut next: Vec<Vec<f64>> = v.iter().map(|x| multiply(x)).collect();
        orthonormalise(&mut next);
        let change: f64 = next
            .iter()
            .zip(&v)
            .map(|(p, q)| 1.0 - p.iter().zip(q).map(|(x, y)| x * y).sum::<f64>().abs())
            .fold(0.0, f64::max);
        v = next;
        if change < 1e-10 {
            break;
        }
    }
    let mut ranked: Vec<(f64, Vec<f64>)> = v
        .into_iter()
        .map(|x| {
            let ax = multiply(&x);
            (x.iter().zip(&ax).map(|(p, q)| p * q).sum(), x)
        })
        .collect();
    ranked.sort_by(|p, q| q.0.total_cmp(&p.0));
    ranked.into_iter().map(|(_, x)| x).collect()
}

/// Modified Gram-Schmidt, in place.
fn orthonormalise(vectors: &mut [Vec<f64>]) {
    for i in 0..vectors.len() {
        let (done, rest) = vectors.split_at_mut(i);
        let Some(v) = rest.first_mut() else { continue };
        for u in done.iter() {
            let d: f64 = u.iter().zip(v.iter()).map(|(a, b)| a * b).sum();
            for (x, y) in v.iter_mut().zip(u) {
                *x -= d * y;
            }
        }
        let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        if norm > 0.0 {
            v.iter_mut().for_each(|x| *x /= norm);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Points spread 10x more along (1, 1, 0)/sqrt(2) than along (0, 0, 1), none along the rest.
    fn rows() -> Vec<f32> {
        (0..200)
            .flat_map(|i| {
                let t = (i as f32 / 199.0 - 0.5) * 10.0;
                let s = ((i * 37 % 200) as f32 / 199.0 - 0.5) * 1.0;
                [t + 3.0, t - 1.0, s + 0.5]
            })
            .collect()
    }

    #[test]
    fn finds_the_directions_of_largest_variance() {
        let pca = Pca::fit(&rows(), 3, 2, &Device::flex()).expect("fits");
        let first = &pca.components[0];
        let h = std::f64::consts::FRAC_1_SQRT_2;
        assert!((first[0].abs() - h).abs() < 1e-3 && (first[1].abs() - h).abs() < 1e-3);
        assert!(first[2].abs() < 1e-3, "{first:?}");
        assert!((pca.components[1][2].abs() - 1.0).abs() < 1e-3);
        // Two components hold all the variance; one leaves the second direction's.
        assert!(pca.reconstruction_mse(&rows(), 2) < 1e-8);
        let one = pca.reconstruction_mse(&rows(), 1);
        assert!(one > 0.01 && one < 0.05, "{one}");
    }

    #[test]
    fn bad_shapes_are_errors() {
        let device = Device::flex();
        assert!(Pca::fit(&[1.0, 2.0, 3.0], 2, 1, &device).is_err());
        assert!(Pca::fit(&rows(), 3, 0, &device).is_err());
        assert!(Pca::fit(&rows(), 3, 4, &device).is_err());
        // Three rows span two directions, not three.
        let three = &rows()[..9];
        assert!(Pca::fit(three, 3, 2, &device).is_ok());
        let error = Pca::fit(three, 3, 3, &device).expect_err("a third component of 3 rows");
        assert!(
            error.to_string().contains("at most 2 directions"),
            "{error}"
        );
    }
}
