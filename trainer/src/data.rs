//! The MNIST dataset: gzipped IDX files, checked against their SHA-256 sums and their headers.
//!
//! Pixels stay `u8` in memory (47 MB for the training set) and are turned into `[0, 1]` floats
//! one batch at a time by [`Mnist::batch`].

use std::{
    fs,
    io::Read,
    path::{Path, PathBuf},
};

use burn::prelude::*;
use sha2::{Digest, Sha256};

/// Side of an MNIST image.
pub const SIDE: usize = 28;
/// Pixels in an MNIST image.
pub const PIXELS: usize = SIDE * SIDE;

const IMAGES_MAGIC: u32 = 0x0000_0803;
const LABELS_MAGIC: u32 = 0x0000_0801;

/// Why a dataset could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// Reading a file failed.
    // The I/O error is the source: anyhow prints it below ("Caused by"), not twice.
    #[error("cannot read {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file's SHA-256 differs from the one in `SHA256SUMS`.
    #[error("{path} is corrupt: SHA-256 {found}, expected {expected} (from SHA256SUMS)")]
    Checksum {
        /// The file.
        path: PathBuf,
        /// Listed digest.
        expected: String,
        /// Actual digest.
        found: String,
    },
    /// `SHA256SUMS` has no line for the file.
    #[error("{sums} lists no checksum for {file}")]
    NotListed {
        /// The sums file.
        sums: PathBuf,
        /// The file name looked for.
        file: String,
    },
    /// The gzip stream is corrupt or truncated.
    #[error("{path} is not a valid gzip file")]
    Gzip {
        /// The file.
        path: PathBuf,
        /// The decoder's error.
        source: std::io::Error,
    },
    /// The IDX header is wrong or the body is shorter/longer than the header says.
    #[error("{path}: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// Which of the two official splits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// 60,000 training images.
    Train,
    /// 10,000 test images.
    Test,
}

impl Split {
    fn prefix(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "t10k",
        }
    }
}

/// One split of MNIST in memory.
#[derive(Debug, Clone)]
pub struct Mnist {
    /// `len * 784` pixels, row-major, 0 = background.
    pub images: Vec<u8>,
    /// `len` labels in 0..=9.
    pub labels: Vec<u8>,
}

/// The dataset bundled with the repository.
pub fn bundled_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/mnist")
}

pub(crate) fn read(path: &Path) -> Result<Vec<u8>, DataError> {
    fs::read(path).map_err(|source| DataError::Io {
        path: path.to_owned(),
        source,
    })
}

pub(crate) fn verify_checksum(dir: &Path, file: &str, bytes: &[u8]) -> Result<(), DataError> {
    let sums_path = dir.join("SHA256SUMS");
    let sums = String::from_utf8_lossy(&read(&sums_path)?).into_owned();
    let expected = sums
        .lines()
        .filter_map(|l| l.split_once(char::is_whitespace))
        .find(|(_, name)| name.trim().trim_start_matches('*') == file)
        .map(|(hash, _)| hash.to_ascii_lowercase())
        .ok_or_else(|| DataError::NotListed {
            sums: sums_path.clone(),
            file: file.to_owned(),
        })?;
    let found: String = Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if found != expected {
        return Err(DataError::Checksum {
            path: dir.join(file),
            expected,
            found,
        });
    }
    Ok(())
}

/// The most bytes an IDX file may decompress to: MNIST's largest is 47 MB (60,000 28x28
/// images). Gzip packs up to ~1,000 bytes into one, so a small file could otherwise ask for
/// more memory than the machine has before its IDX header is ever checked.
pub const MAX_IDX_BYTES: u64 = 1 << 28;

fn gunzip(path: &Path, bytes: &[u8]) -> Result<Vec<u8>, DataError> {
    gunzip_at_most(path, bytes, MAX_IDX_BYTES)
}

/// `gunzip` with the limit as a parameter (tests use a small one).
fn gunzip_at_most(path: &Path, bytes: &[u8], limit: u64) -> Result<Vec<u8>, DataError> {
    let mut out = Vec::new();
    // Every member of the file, as gunzip reads it (a file may be gzip streams one after another).
    flate2::read::MultiGzDecoder::new(bytes)
        .take(limit + 1)
        .read_to_end(&mut out)
        .map_err(|source| DataError::Gzip {
            path: path.to_owned(),
            source,
        })?;
    if out.len() as u64 > limit {
        return Err(DataError::Format {
            path: path.to_owned(),
            reason: format!(
                "decompresses to more than {limit} bytes, far more than an MNIST-sized IDX file"
            ),
        });
    }
    Ok(out)
}

/// Parses an IDX file (already decompressed) with the given magic and returns its dimensions
/// and body, checking that the body has exactly the size the header announces.
pub fn parse_idx<'a>(
    path: &Path,
    bytes: &'a [u8],
    magic: u32,
) -> Result<(Vec<usize>, &'a [u8]), DataError> {
    let fail = |reason: String| DataError::Format {
        path: path.to_owned(),
        reason,
    };
    let word = |i: usize| -> Option<u32> {
        let b = bytes.get(4 * i..4 * i + 4)?;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    let found = word(0).ok_or_else(|| fail("file too short for an IDX header".into()))?;
    if found != magic {
        return Err(fail(format!(
            "bad IDX magic {found:#010x}, expected {magic:#010x}"
        )));
    }
    let rank = (magic & 0xff) as usize;
    let dims = (1..=rank)
        .map(|i| word(i).map(|d| d as usize))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| fail("IDX header truncated".into()))?;
    let header = 4 * (rank + 1);
    let body = &bytes[header..];
    let expected = dims.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
    if expected != Some(body.len()) {
        let expected = expected.map_or("more".into(), |n| n.to_string());
        return Err(fail(format!(
            "IDX header announces {expected} bytes of data ({dims:?}), file has {}",
            body.len()
        )));
    }
    Ok((dims, body))
}

impl Mnist {
    /// Loads one split from `dir` (gzipped IDX files plus `SHA256SUMS`), verifying checksums,
    /// headers, image size and that image and label counts agree.
    pub fn load(dir: &Path, split: Split) -> Result<Self, DataError> {
        let load = |kind: &str, magic: u32| -> Result<(PathBuf, Vec<usize>, Vec<u8>), DataError> {
            let file = format!("{}-{kind}-idx{}-ubyte.gz", split.prefix(), magic & 0xff);
            let path = dir.join(&file);
            let gz = read(&path)?;
            verify_checksum(dir, &file, &gz)?;
            let raw = gunzip(&path, &gz)?;
            let (dims, body) = parse_idx(&path, &raw, magic)?;
            Ok((path, dims, body.to_vec()))
        };
        let (image_path, image_dims, images) = load("images", IMAGES_MAGIC)?;
        // A split of no images would train, test or fit nothing and report a loss of 0.
        if image_dims[0] == 0 {
            return Err(DataError::Format {
                path: image_path,
                reason: "the file holds no images".into(),
            });
        }
        if image_dims[1..] != [SIDE, SIDE] {
            return Err(DataError::Format {
                path: image_path,
                reason: format!("images are {:?}, expected 28x28", &image_dims[1..]),
            });
        }
        let (label_path, label_dims, labels) = load("labels", LABELS_MAGIC)?;
        if label_dims[0] != image_dims[0] {
            return Err(DataError::Format {
                path: label_path,
                reason: format!("{} labels for {} images", label_dims[0], image_dims[0]),
            });
        }
        if let Some(bad) = labels.iter().find(|&&l| l > 9) {
            return Err(DataError::Format {
                path: label_path,
                reason: format!("label {bad} is not a digit"),
            });
        }
        Ok(Mnist { images, labels })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there is no image.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Keeps the first `n` images (all if `n` is larger).
    pub fn truncate(&mut self, n: usize) {
        let n = n.min(self.len());
        self.images.truncate(n * PIXELS);
        self.labels.truncate(n);
    }

    /// Pixels of image `i` (`i < len`).
    pub fn image(&self, i: usize) -> &[u8] {
        &self.images[i * PIXELS..(i + 1) * PIXELS]
    }

    /// The labels of the images at `indices`.
    pub fn digits(&self, indices: &[usize]) -> Vec<u8> {
        indices.iter().map(|&i| self.labels[i]).collect()
    }

    /// The images at `indices` as a float batch in `[0, 1]`.
    ///
    /// # Shapes
    /// - output: `[indices.len(), 1, 28, 28]`
    pub fn batch(&self, indices: &[usize], device: &Device) -> Tensor<4> {
        let mut values = Vec::with_capacity(indices.len() * PIXELS);
        for &i in indices {
            values.extend(self.image(i).iter().map(|&p| p as f32 / 255.0));
        }
        Tensor::<1>::from_floats(values.as_slice(), device).reshape([indices.len(), 1, SIDE, SIDE])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idx(magic: u32, dims: &[u32], body: &[u8]) -> Vec<u8> {
        let mut v = magic.to_be_bytes().to_vec();
        for d in dims {
            v.extend_from_slice(&d.to_be_bytes());
        }
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn idx_header_and_size_are_checked() {
        let p = Path::new("x");
        let ok = idx(IMAGES_MAGIC, &[2, 2, 2], &[0; 8]);
        let (dims, body) = parse_idx(p, &ok, IMAGES_MAGIC).expect("valid");
        assert_eq!((dims, body.len()), (vec![2, 2, 2], 8));
        let short = idx(IMAGES_MAGIC, &[2, 2, 2], &[0; 7]);
        let err = parse_idx(p, &short, IMAGES_MAGIC).unwrap_err().to_string();
        assert!(err.contains("announces 8 bytes"), "{err}");
        let err = parse_idx(p, &ok, LABELS_MAGIC).unwrap_err().to_string();
        assert!(err.contains("bad IDX magic"), "{err}");
        let err = parse_idx(p, &ok[..9], IMAGES_MAGIC)
            .unwrap_err()
            .to_string();
        assert!(err.contains("truncated"), "{err}");
        // Dimensions whose product overflows (a 32-bit `usize` here, or 64-bit) and an empty body.
        let huge = idx(IMAGES_MAGIC, &[u32::MAX, u32::MAX, u32::MAX], &[]);
        let err = parse_idx(p, &huge, IMAGES_MAGIC).unwrap_err().to_string();
        assert!(err.contains("announces more bytes"), "{err}");
    }

    #[test]
    fn bundled_test_split_loads_and_is_real_mnist() {
        let test = Mnist::load(&bundled_dir(), Split::Test).expect("bundled MNIST");
        assert_eq!(test.len(), 10_000);
        let mut counts = [0usize; 10];
        for &l in &test.labels {
            counts[l as usize] += 1;
        }
        assert_eq!(
            counts,
            [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
        );
    }

    fn copy_dataset(to: &Path) {
        fs::create_dir_all(to).expect("mkdir");
        for entry in fs::read_dir(bundled_dir()).expect("data dir") {
            let entry = entry.expect("entry");
            fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
        }
    }

    /// Writes `bytes` as `file` of the dataset in `dir` and updates its line in `SHA256SUMS`:
    /// how a damaged file gets past the checksum.
    fn write_with_checksum(dir: &Path, file: &str, bytes: &[u8]) {
        fs::write(dir.join(file), bytes).expect("write");
        let digest: String = Sha256::digest(bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let sums = fs::read_to_string(dir.join("SHA256SUMS")).expect("sums");
        let sums: String = sums
            .lines()
            .map(|l| {
                if l.ends_with(file) {
                    format!("{digest}  {file}\n")
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
        fs::write(dir.join("SHA256SUMS"), sums).expect("write sums");
    }

    #[test]
    fn corrupt_and_truncated_files_are_rejected_with_clear_errors() {
        let dir = std::env::temp_dir().join(format!("mnist-corrupt-{}", std::process::id()));
        copy_dataset(&dir);
        let labels = dir.join("t10k-labels-idx1-ubyte.gz");
        let mut bytes = fs::read(&labels).expect("read");

        // One flipped byte: caught by the checksum.
        bytes[100] ^= 0x55;
        fs::write(&labels, &bytes).expect("write");
        let err = Mnist::load(&dir, Split::Test).unwrap_err().to_string();
        assert!(err.contains("is corrupt: SHA-256"), "{err}");

        // Truncated file whose checksum was "updated": caught by gzip.
        bytes[100] ^= 0x55;
        write_with_checksum(&dir, "t10k-labels-idx1-ubyte.gz", &bytes[..bytes.len() / 2]);
        let err = Mnist::load(&dir, Split::Test).unwrap_err().to_string();
        assert!(err.contains("not a valid gzip file"), "{err}");

        // A valid split of no images (and as many labels), checksums and all: refused.
        let gzip = |raw: &[u8]| {
            use std::io::Write;
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(raw).expect("gzip");
            gz.finish().expect("gzip")
        };
        let images = gzip(&idx(IMAGES_MAGIC, &[0, 28, 28], &[]));
        write_with_checksum(&dir, "t10k-images-idx3-ubyte.gz", &images);
        let labels = gzip(&idx(LABELS_MAGIC, &[0], &[]));
        write_with_checksum(&dir, "t10k-labels-idx1-ubyte.gz", &labels);
        let err = Mnist::load(&dir, Split::Test).unwrap_err().to_string();
        assert!(err.contains("holds no images"), "{err}");

        // A file that decompresses past the limit stops there, before the rest is inflated.
        let big = gzip(&vec![0; 4097]);
        let err = gunzip_at_most(Path::new("big.gz"), &big, 4096).expect_err("too large");
        assert!(err.to_string().contains("more than 4096 bytes"), "{err}");
        assert_eq!(
            gunzip_at_most(Path::new("ok.gz"), &big, 4097)
                .expect("fits")
                .len(),
            4097
        );
        // Two gzip members one after the other are one file's contents, as for gunzip.
        let halves = [gzip(b"first half, "), gzip(b"second half")].concat();
        assert_eq!(
            gunzip(Path::new("two.gz"), &halves).expect("both members"),
            b"first half, second half"
        );

        fs::remove_file(dir.join("t10k-images-idx3-ubyte.gz")).expect("rm");
        let err = Mnist::load(&dir, Split::Test).unwrap_err().to_string();
        assert!(err.contains("cannot read"), "{err}");
        fs::remove_dir_all(&dir).ok();
    }
}
