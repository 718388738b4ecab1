//! The image files a subcommand reads (files and folders on the command line) and the paths it
//! writes: each checked before anything is written.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use edge_runtime::ImageFormat;

/// The image files named on the command line, folders expanded (sorted, .png and .pgm only).
pub(crate) fn image_files(inputs: &[PathBuf], verb: &str) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for input in inputs {
        if input.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(input)
                .with_context(|| format!("reading folder {}", input.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| ImageFormat::from_path(p).is_ok())
                .filter(|p| {
                    // An image's name on something that is not a file (a broken link, a
                    // folder) is said, not passed over.
                    let file = p.is_file();
                    if !file {
                        machine::errln!("skipped: {} is not a readable file", p.display());
                    }
                    file
                })
                .collect();
            found.sort();
            files.extend(found);
        } else {
            files.push(input.clone());
        }
    }
    if files.is_empty() {
        bail!("no images to {verb}: name image files or folders");
    }
    Ok(files)
}

/// Runs `write` with the output folder `out` of images that are `verb`ed into it: refused first
/// when it is a file (or stdout's `-`), made when missing, and removed again when `write` fails
/// having written nothing into it.
pub(crate) fn into_output_folder(
    out: &Path,
    verb: &str,
    write: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    if out.as_os_str() == "-" {
        bail!("--out - (stdout): image files are {verb} into a folder");
    }
    if out.exists() && !out.is_dir() {
        bail!(
            "--out {} is a file: image files are {verb} into a folder",
            out.display()
        );
    }
    let created = !out.exists();
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let result = write(out);
    if result.is_err() && created {
        // Only if nothing was written into it (`remove_dir` leaves a folder with files).
        std::fs::remove_dir(out).ok();
    }
    result
}

/// Where each of `files` is written in the folder `out` (under its own file name), refusing to
/// overwrite an input or to write two inputs to one file.
pub(crate) fn targets(files: &[PathBuf], out: &Path) -> Result<Vec<PathBuf>> {
    let inputs = canonical(files);
    let mut taken = std::collections::HashSet::new();
    files
        .iter()
        .map(|file| {
            let name = file
                .file_name()
                .with_context(|| format!("{} names no file to write into --out", file.display()))?;
            let target = out.join(name);
            if !taken.insert(target.clone()) {
                bail!(
                    "two inputs named {} would both be written to {}",
                    target.file_name().unwrap_or_default().to_string_lossy(),
                    target.display()
                );
            }
            if std::fs::canonicalize(&target).is_ok_and(|t| inputs.contains(&t)) {
                bail!(
                    "{} would overwrite an input: choose another --out folder",
                    target.display()
                );
            }
            Ok(target)
        })
        .collect()
}

/// Refuses outputs that name a file the command reads (its model, an input), or one file twice:
/// each `(flag, path)` of `outputs` against `inputs` and the outputs before it. Paths are
/// compared as the files they name (links and `..` resolved; a file not there yet by its folder).
pub(crate) fn distinct_outputs(outputs: &[(&str, &Path)], inputs: &[&Path]) -> Result<()> {
    let read: std::collections::HashSet<PathBuf> = inputs
        .iter()
        .filter_map(|p| std::fs::canonicalize(p).ok())
        .collect();
    let mut written: Vec<(&str, PathBuf)> = Vec::new();
    for &(flag, path) in outputs {
        let Some(file) = resolved(path) else {
            continue; // its folder is missing: `folder_of` says so
        };
        if read.contains(&file) {
            bail!(
                "{flag} {} is a file this command reads: writing it would destroy it",
                path.display()
            );
        }
        if let Some((other, _)) = written.iter().find(|(_, f)| *f == file) {
            bail!(
                "{flag} and {other} name the same file, {}: one would overwrite the other",
                path.display()
            );
        }
        written.push((flag, file));
    }
    Ok(())
}

/// The file `path` names, canonical: itself where it exists, else its folder's canonical path
/// and its name; for a link to nothing yet, the file the link names (which a write makes).
/// `None` when neither is there.
fn resolved(path: &Path) -> Option<PathBuf> {
    let path = match machine::destination(path) {
        machine::Destination::Replace(file) => file,
        machine::Destination::WriteInto => path.to_path_buf(),
    };
    let path = path.as_path();
    std::fs::canonicalize(path).ok().or_else(|| {
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
        Some(
            std::fs::canonicalize(dir.unwrap_or(Path::new(".")))
                .ok()?
                .join(path.file_name()?),
        )
    })
}

/// The files that exist, as canonical paths (to tell whether an output would overwrite one).
pub(crate) fn canonical(files: &[PathBuf]) -> std::collections::HashSet<PathBuf> {
    files
        .iter()
        .filter_map(|f| std::fs::canonicalize(f).ok())
        .collect()
}

/// Checks that the folder a file is to be written into is there, as a folder.
pub(crate) fn folder_of(path: &Path) -> Result<()> {
    match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(d) if !d.exists() => bail!("the folder of {} does not exist", path.display()),
        Some(d) if !d.is_dir() => {
            bail!(
                "cannot write {}: {} is not a folder",
                path.display(),
                d.display()
            )
        }
        _ => Ok(()),
    }
}
