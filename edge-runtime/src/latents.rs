//! Where latent vectors come from: a file (CSV or JSON), random samples of the VAE's prior
//! N(0, I), a grid over the 2-d latent plane, or a morph between two vectors.
//!
//! Every function returns plain `Vec<Vec<f32>>`, one vector per digit, in the order the digits
//! are decoded; [`crate::Decoder::decode`] checks each vector's length and values.

use std::path::Path;

use crate::Error;

/// The latent file formats [`read_file`] understands, chosen by extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LatentFormat {
    /// One vector per line, values separated by commas; blank lines and lines starting with `#`
    /// are skipped.
    Csv,
    /// A JSON array of arrays of numbers, e.g. `[[0.5, -1.2], [0, 0]]`.
    Json,
}

impl LatentFormat {
    /// `.csv` or `.json`, in any letter case.
    ///
    /// # Errors
    /// [`Error::LatentFile`] for any other extension or none.
    pub fn from_path(path: &Path) -> Result<Self, Error> {
        let extension = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match extension.as_deref() {
            Some("csv") => Ok(Self::Csv),
            Some("json") => Ok(Self::Json),
            _ => Err(Error::LatentFile {
                path: path.into(),
                reason: "use a .csv or .json extension".into(),
            }),
        }
    }
}

/// Reads latent vectors from a CSV or JSON file (see [`LatentFormat`]).
///
/// # Errors
/// [`Error::LatentFile`] when the file cannot be read, is not valid in its format, holds no
/// vector, or holds vectors of different lengths or non-finite values; the message names the line
/// (CSV) or position (JSON).
pub fn read_file(path: &Path) -> Result<Vec<Vec<f32>>, Error> {
    let fail = |reason: String| Error::LatentFile {
        path: path.into(),
        reason,
    };
    let format = LatentFormat::from_path(path)?;
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    // A byte-order mark, as some editors and spreadsheets start a UTF-8 file with, is no value.
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let latents = match format {
        LatentFormat::Csv => parse_csv(text),
        LatentFormat::Json => parse_json(text),
    }
    .map_err(fail)?;
    check_uniform(&latents).map_err(fail)?;
    Ok(latents)
}

/// Parses CSV text: one vector per line.
fn parse_csv(text: &str) -> Result<Vec<Vec<f32>>, String> {
    let mut latents = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let vector = line
            .split(',')
            .map(|v| {
                let v = v.trim();
                v.parse::<f32>().map_err(|_| {
                    let v = crate::error::excerpt(v);
                    format!("line {}: `{v}` is not a number", number + 1)
                })
            })
            .collect::<Result<Vec<f32>, String>>()?;
        latents.push(vector);
    }
    Ok(latents)
}

/// Parses JSON text: an array of arrays of numbers.
fn parse_json(text: &str) -> Result<Vec<Vec<f32>>, String> {
    serde_json::from_str::<Vec<Vec<f32>>>(text)
        .map_err(|e| format!("expected an array of arrays of numbers: {e}"))
}

/// At least one vector, all of one non-zero length, every value finite.
fn check_uniform(latents: &[Vec<f32>]) -> Result<(), String> {
    let Some(first) = latents.first() else {
        return Err("no latent vector in the file".into());
    };
    for (i, v) in latents.iter().enumerate() {
        if v.is_empty() {
            return Err(format!("vector {} is empty", i + 1));
        }
        if v.len() != first.len() {
            return Err(format!(
                "vector {} has {} values, the first has {}",
                i + 1,
                v.len(),
                first.len()
            ));
        }
        if let Some(bad) = v.iter().find(|x| !x.is_finite()) {
            return Err(format!("vector {} holds {bad}, not a finite number", i + 1));
        }
    }
    Ok(())
}

/// `count` vectors of `dim` independent standard normal values (the VAE's prior), reproducible
/// from `seed` on every platform (xorshift64* and the Box-Muller transform, in f64).
pub fn random_normal(count: usize, dim: usize, seed: u64) -> Vec<Vec<f32>> {
    // A zero state would stay zero; any other seed works.
    let mut state = seed ^ 0x9E37_79B9_7F4A_7C15;
    if state == 0 {
        state = 1;
    }
    let mut uniform = move || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        let bits = state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11;
        // In (0, 1]: the logarithm below never sees 0.
        (bits as f64 + 1.0) / (1u64 << 53) as f64
    };
    (0..count)
        .map(|_| {
            (0..dim)
                .map(|_| {
                    let (u, v) = (uniform(), uniform());
                    ((-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()) as f32
                })
                .collect()
        })
        .collect()
}

/// A `side x side` grid over the 2-d latent plane, `[-span, span]` on both axes, row by row from
/// the top (`z1 = +span`) and left to right (`z0 = -span`), as a contact sheet shows it. A side of
/// 1 gives the origin.
pub fn grid(side: usize, span: f32) -> Vec<Vec<f32>> {
    let at = |i: usize| {
        if side < 2 {
            0.0
        } else {
            -span + 2.0 * span * i as f32 / (side - 1) as f32
        }
    };
    (0..side)
        .flat_map(|row| (0..side).map(move |col| vec![at(col), -at(row)]))
        .collect()
}

/// `steps` vectors from `from` to `to` (both included), evenly spaced on the straight line:
/// `from * (1 - t) + to * t`, which stays finite for any finite ends (`from + (to - from) * t`
/// overflowed to NaN for ends of opposite sign near f32's limits).
///
/// # Errors
/// [`Error::MorphLengths`] when the two vectors differ in length.
pub fn morph(from: &[f32], to: &[f32], steps: usize) -> Result<Vec<Vec<f32>>, Error> {
    if from.len() != to.len() {
        return Err(Error::MorphLengths {
            from: from.len(),
            to: to.len(),
        });
    }
    Ok((0..steps)
        .map(|i| {
            let t = if steps < 2 {
                0.0
            } else {
                i as f32 / (steps - 1) as f32
            };
            from.iter()
                .zip(to)
                .map(|(a, b)| a * (1.0 - t) + b * t)
                .collect()
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_skips_blank_and_comment_lines_and_names_bad_lines() {
        let text = "# z0, z1\n0.5, -1.2\n\n  0,0  \n";
        assert_eq!(parse_csv(text), Ok(vec![vec![0.5, -1.2], vec![0.0, 0.0]]));
        assert_eq!(
            parse_csv("1,2\n3,x\n"),
            Err("line 2: `x` is not a number".into())
        );
        assert_eq!(parse_csv("1,,2"), Err("line 1: `` is not a number".into()));
        let long = parse_csv(&"x".repeat(100_000)).expect_err("not a number");
        assert!(
            long.ends_with("...` is not a number") && long.len() < 100,
            "{long}"
        );
    }

    #[test]
    fn json_is_an_array_of_arrays() {
        assert_eq!(
            parse_json("[[0.5, -1.2], [0, 0]]"),
            Ok(vec![vec![0.5, -1.2], vec![0.0, 0.0]])
        );
        assert!(parse_json("[0.5, -1.2]").is_err());
        assert!(parse_json("{\"z\": [1]}").is_err());
    }

    #[test]
    fn files_need_uniform_finite_vectors() {
        assert!(check_uniform(&[vec![1.0, 2.0], vec![3.0, 4.0]]).is_ok());
        assert_eq!(
            check_uniform(&[vec![1.0, 2.0], vec![3.0]]),
            Err("vector 2 has 1 values, the first has 2".into())
        );
        assert_eq!(
            check_uniform(&[vec![1.0, f32::NAN]]),
            Err("vector 1 holds NaN, not a finite number".into())
        );
        assert_eq!(
            check_uniform(&[]),
            Err("no latent vector in the file".into())
        );
        assert_eq!(check_uniform(&[vec![]]), Err("vector 1 is empty".into()));
    }

    #[test]
    fn read_file_reports_path_and_reason() {
        let dir = tempfile::tempdir().expect("temp dir");
        let csv = dir.path().join("z.csv");
        std::fs::write(&csv, "1,2\n3,4\n").expect("write");
        assert_eq!(
            read_file(&csv).expect("reads"),
            vec![vec![1.0, 2.0], vec![3.0, 4.0]]
        );
        let json = dir.path().join("z.json");
        std::fs::write(&json, "[[1, 2], [3]]").expect("write");
        let message = read_file(&json).expect_err("ragged").to_string();
        assert!(message.contains("z.json") && message.contains("vector 2 has 1 values"));
        let missing = read_file(&dir.path().join("none.csv")).expect_err("missing");
        assert!(missing.to_string().contains("none.csv"));
        assert!(read_file(&dir.path().join("z.txt")).is_err());
        // A UTF-8 byte-order mark first, as spreadsheets write: not part of the first value.
        std::fs::write(&csv, "\u{feff}1,2\n").expect("write");
        assert_eq!(read_file(&csv).expect("reads"), vec![vec![1.0, 2.0]]);
        std::fs::write(&json, "\u{feff}[[1, 2]]").expect("write");
        assert_eq!(read_file(&json).expect("reads"), vec![vec![1.0, 2.0]]);
    }

    #[test]
    fn random_samples_are_reproducible_and_standard_normal() {
        let a = random_normal(2000, 2, 7);
        assert_eq!(a, random_normal(2000, 2, 7));
        assert_ne!(a, random_normal(2000, 2, 8));
        let values: Vec<f64> = a.iter().flatten().map(|&v| v as f64).collect();
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
        // 4000 samples: the standard error of the mean is ~0.016, of the variance ~0.022.
        assert!(mean.abs() < 0.08, "mean {mean}");
        assert!((var - 1.0).abs() < 0.11, "variance {var}");
        assert!(values.iter().all(|v| v.is_finite()));
    }

    #[test]
    fn grid_runs_top_left_to_bottom_right() {
        let g = grid(3, 2.0);
        assert_eq!(g.len(), 9);
        assert_eq!(g[0], vec![-2.0, 2.0]);
        assert_eq!(g[2], vec![2.0, 2.0]);
        assert_eq!(g[4], vec![0.0, 0.0]);
        assert_eq!(g[8], vec![2.0, -2.0]);
        assert_eq!(grid(1, 2.0), vec![vec![0.0, 0.0]]);
    }

    #[test]
    fn morph_includes_both_ends() {
        let m = morph(&[0.0, 1.0], &[1.0, -1.0], 3).expect("same lengths");
        assert_eq!(m, vec![vec![0.0, 1.0], vec![0.5, 0.0], vec![1.0, -1.0]]);
        // Ends near f32's limits: finite all along, the ends exactly as given.
        let far = morph(&[-3e38, 0.0], &[3e38, 0.0], 3).expect("same lengths");
        assert_eq!(far, vec![vec![-3e38, 0.0], vec![0.0, 0.0], vec![3e38, 0.0]]);
        assert!(matches!(
            morph(&[0.0], &[1.0, 2.0], 3),
            Err(Error::MorphLengths { from: 1, to: 2 })
        ));
    }
}
