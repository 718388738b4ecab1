//! Pictures of a trained run, as PNG files: the test digits next to their reconstructions, the
//! latent means of the test set coloured by digit, digits decoded across the 2-d latent plane, and
//! the loss curves from `metrics.csv`. Everything is drawn on a small RGB [`Canvas`] (no plotting
//! dependency) and written atomically.

use std::path::{Path, PathBuf};

use anyhow::Context;
use burn::prelude::*;

use crate::{
    data::{Mnist, SIDE, Split},
    model::{Corruption, Model, with_condition},
    run::load_run,
    training::tensor_values,
};

/// An RGB color.
pub type Rgb = [u8; 3];

/// A 28x28 grayscale image, row-major, values in `[0, 1]`.
pub type Image = Vec<f32>;

/// The ten digit colors (matplotlib's tab10), in digit order.
pub const DIGIT_COLORS: [Rgb; 10] = [
    [31, 119, 180],
    [255, 127, 14],
    [44, 160, 44],
    [214, 39, 40],
    [148, 103, 189],
    [140, 86, 75],
    [227, 119, 194],
    [127, 127, 127],
    [188, 189, 34],
    [23, 190, 207],
];

const WHITE: Rgb = [255, 255, 255];
const BLACK: Rgb = [0, 0, 0];
const GRAY: Rgb = [200, 200, 200];

/// A 3x5 pixel font for the labels: digits, a few letters and punctuation. Each glyph is five
/// rows of three bits, most significant bit on the left.
fn glyph(c: char) -> Option<[u8; 5]> {
    Some(match c {
        '0' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [7, 1, 7, 4, 7],
        '3' => [7, 1, 7, 1, 7],
        '4' => [5, 5, 7, 1, 1],
        '5' => [7, 4, 7, 1, 7],
        '6' => [7, 4, 7, 5, 7],
        '7' => [7, 1, 1, 1, 1],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 7],
        '.' => [0, 0, 0, 0, 2],
        '-' => [0, 0, 7, 0, 0],
        'a' => [0, 7, 5, 7, 5],
        'd' => [1, 1, 7, 5, 7],
        'g' => [0, 7, 5, 7, 1],
        'm' => [0, 5, 7, 5, 5],
        'u' => [0, 5, 5, 5, 7],
        'w' => [0, 5, 5, 7, 5],
        'y' => [0, 5, 5, 7, 1],
        'c' => [0, 7, 4, 4, 7],
        'e' => [7, 4, 7, 4, 7],
        'h' => [4, 4, 7, 5, 5],
        'i' => [2, 0, 2, 2, 2],
        'l' => [4, 4, 4, 4, 7],
        'n' => [0, 6, 5, 5, 5],
        'o' => [0, 7, 5, 5, 7],
        'p' => [7, 5, 7, 4, 4],
        'r' => [0, 7, 4, 4, 4],
        's' => [7, 4, 7, 1, 7],
        't' => [2, 7, 2, 2, 2],
        ' ' => [0; 5],
        _ => return None,
    })
}

/// An RGB image to draw on; points outside it are ignored.
#[derive(Debug, Clone, PartialEq)]
pub struct Canvas {
    width: usize,
    height: usize,
    rgb: Vec<u8>,
}

impl Canvas {
    /// A `width x height` canvas filled with `background`.
    pub fn new(width: usize, height: usize, background: Rgb) -> Self {
        Canvas {
            width,
            height,
            rgb: background.repeat(width * height),
        }
    }

    /// Width in pixels.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> usize {
        self.height
    }

    /// The color at `(x, y)`, if inside.
    pub fn get(&self, x: usize, y: usize) -> Option<Rgb> {
        (x < self.width && y < self.height).then(|| {
            let i = 3 * (y * self.width + x);
            [self.rgb[i], self.rgb[i + 1], self.rgb[i + 2]]
        })
    }

    /// Colors one pixel.
    pub fn set(&mut self, x: i64, y: i64, color: Rgb) {
        if x >= 0 && y >= 0 && (x as usize) < self.width && (y as usize) < self.height {
            let i = 3 * (y as usize * self.width + x as usize);
            self.rgb[i..i + 3].copy_from_slice(&color);
        }
    }

    /// A filled axis-aligned rectangle.
    pub fn rect(&mut self, (x, y): (i64, i64), (w, h): (i64, i64), color: Rgb) {
        for yy in y..y + h {
            for xx in x..x + w {
                self.set(xx, yy, color);
            }
        }
    }

    /// A one-pixel line (Bresenham).
    pub fn line(&mut self, (mut x0, mut y0): (i64, i64), (x1, y1): (i64, i64), color: Rgb) {
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
        let mut err = dx + dy;
        loop {
            self.set(x0, y0, color);
            if x0 == x1 && y0 == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x0 += sx;
            }
            if e2 <= dx {
                err += dx;
                y0 += sy;
            }
        }
    }

    /// A filled disc of radius `r`.
    pub fn disc(&mut self, (cx, cy): (i64, i64), r: i64, color: Rgb) {
        for y in -r..=r {
            for x in -r..=r {
                if x * x + y * y <= r * r {
                    self.set(cx + x, cy + y, color);
                }
            }
        }
    }

    /// Text in the 3x5 font at `scale`, top left at `(x, y)`; unknown characters are skipped.
    pub fn text(&mut self, (x, y): (i64, i64), text: &str, scale: i64, color: Rgb) {
        for (i, c) in text.chars().enumerate() {
            let Some(rows) = glyph(c) else { continue };
            let left = x + i as i64 * 4 * scale;
            for (row, bits) in rows.iter().enumerate() {
                for col in 0..3 {
                    if bits & (4 >> col) != 0 {
                        let at = (left + col * scale, y + row as i64 * scale);
                        self.rect(at, (scale, scale), color);
                    }
                }
            }
        }
    }

    /// A grayscale image (`values` in `[0, 1]`, row-major `side x side`), each pixel a
    /// `scale x scale` square, white strokes on black.
    pub fn gray(&mut self, (x, y): (i64, i64), values: &[f32], side: usize, scale: i64) {
        for (i, v) in values.iter().enumerate().take(side * side) {
            let g = (v.clamp(0.0, 1.0) * 255.0).round() as u8;
            let (col, row) = ((i % side) as i64, (i / side) as i64);
            self.rect((x + col * scale, y + row * scale), (scale, scale), [g; 3]);
        }
    }

    /// The canvas as an 8-bit RGB PNG.
    pub fn png(&self) -> anyhow::Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut encoder = png::Encoder::new(&mut out, self.width as u32, self.height as u32);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header()?;
        writer.write_image_data(&self.rgb)?;
        writer.finish()?;
        Ok(out)
    }
}

/// Maps data coordinates to pixels inside a plot area.
#[derive(Debug, Clone, Copy)]
struct Axes {
    x: (f32, f32),
    y: (f32, f32),
    left: i64,
    top: i64,
    size: (i64, i64),
}

impl Axes {
    fn at(&self, x: f32, y: f32) -> (i64, i64) {
        let fx = (x - self.x.0) / (self.x.1 - self.x.0).max(f32::EPSILON);
        let fy = (y - self.y.0) / (self.y.1 - self.y.0).max(f32::EPSILON);
        (
            self.left + (fx * (self.size.0 - 1) as f32).round() as i64,
            self.top + ((1.0 - fy) * (self.size.1 - 1) as f32).round() as i64,
        )
    }
}

/// Labelled rows of square images (row-major), e.g. `[("input", inputs), ("output", outputs)]`,
/// scaled up by a whole factor to at least 84x84 pixels (28x28 at 3x, 14x14 at 6x).
pub fn reconstructions(rows: &[(&str, Vec<Image>)]) -> Canvas {
    let side_of = |image: &Image| (image.len() as f64).sqrt() as i64;
    let largest = rows.iter().flat_map(|(_, r)| r.iter().map(side_of)).max();
    let (size, gap, label) = ((3 * SIDE as i64).max(largest.unwrap_or(0)), 4, 72);
    let cell = size + gap;
    let n = rows.iter().map(|(_, r)| r.len()).max().unwrap_or(0).max(1) as i64;
    let mut canvas = Canvas::new(
        (label + n * cell + gap) as usize,
        (rows.len().max(1) as i64 * cell + gap) as usize,
        GRAY,
    );
    for (row, (name, images)) in rows.iter().enumerate() {
        let top = gap + row as i64 * cell;
        canvas.text((gap, top + size / 2 - 5), name, 2, BLACK);
        for (i, image) in images.iter().enumerate() {
            let side = side_of(image);
            let scale = (size / side.max(1)).max(1);
            canvas.gray((label + i as i64 * cell, top), image, side as usize, scale);
        }
    }
    canvas
}

/// The 2-d latent means of labelled images as dots coloured by digit (z0 to the right, z1 up),
/// with the axes through 0, the range at their ends and a legend.
pub fn latent_scatter(means: &[[f32; 2]], labels: &[u8]) -> Canvas {
    let (size, margin, legend) = (560i64, 30i64, 60i64);
    let mut canvas = Canvas::new((size + legend) as usize, size as usize, WHITE);
    let extent = means
        .iter()
        .flatten()
        .filter(|v| v.is_finite())
        .fold(1.0f32, |m, v| m.max(v.abs()))
        .ceil();
    let axes = Axes {
        x: (-extent, extent),
        y: (-extent, extent),
        left: margin,
        top: margin,
        size: (size - 2 * margin, size - 2 * margin),
    };
    canvas.line(axes.at(-extent, 0.0), axes.at(extent, 0.0), GRAY);
    canvas.line(axes.at(0.0, -extent), axes.at(0.0, extent), GRAY);
    for (m, &label) in means.iter().zip(labels) {
        if let (true, Some(&color)) = (
            m[0].is_finite() && m[1].is_finite(),
            DIGIT_COLORS.get(label as usize),
        ) {
            canvas.disc(axes.at(m[0], m[1]), 1, color);
        }
    }
    let label = format!("{extent}");
    canvas.text(
        (size - margin - 8 * label.len() as i64, size / 2 + 6),
        &label,
        2,
        BLACK,
    );
    canvas.text((size / 2 + 6, margin - 14), &label, 2, BLACK);
    canvas.text((margin, size / 2 + 6), &format!("-{extent}"), 2, BLACK);
    for (digit, &color) in DIGIT_COLORS.iter().enumerate() {
        let y = margin + digit as i64 * 24;
        canvas.rect((size + 8, y), (14, 14), color);
        canvas.text((size + 28, y + 2), &digit.to_string(), 2, BLACK);
    }
    canvas
}

/// The pixels of the digits `model` decodes from the latents `z`, digit after digit.
fn decoded_pixels(model: &Model, z: Tensor<2>) -> anyhow::Result<Vec<f32>> {
    let width = model
        .decoder_input()
        .context("this family has no decoder")?;
    let [_, given] = z.dims();
    let classes = model.classes();
    anyhow::ensure!(
        given == width,
        "the decoder takes {width} values per digit{}, not {given}",
        if classes > 0 {
            format!(" ({classes} of them the one-hot digit)")
        } else {
            String::new()
        }
    );
    tensor_values(model.decode(z).context("this family has no decoder")?)
}

/// Digits decoded on a `side x side` grid over `[-span, span]^2` of the 2-d latent plane, z1
/// growing upwards, z0 to the right.
///
/// # Errors
/// A model without a decoder of a 2-d latent (a conditional one included: it draws digits).
pub fn latent_grid(
    model: &Model,
    side: usize,
    span: f32,
    device: &Device,
) -> anyhow::Result<Canvas> {
    anyhow::ensure!(
        model.classes() == 0,
        "a conditional decoder has no single latent plane to draw (one per digit)"
    );
    let at = |i: usize| -span + 2.0 * span * i as f32 / (side.max(2) - 1) as f32;
    let latents: Vec<f32> = (0..side)
        .flat_map(|row| (0..side).flat_map(move |col| [at(col), -at(row)]))
        .collect();
    let z = Tensor::<1>::from_floats(latents.as_slice(), device).reshape([side * side, 2]);
    let pixels = decoded_pixels(model, z)?;
    let mut canvas = Canvas::new(side * SIDE, side * SIDE, BLACK);
    for (i, digit) in pixels.chunks_exact(SIDE * SIDE).enumerate() {
        let at = (((i % side) * SIDE) as i64, ((i / side) * SIDE) as i64);
        canvas.gray(at, digit, SIDE, 1);
    }
    Ok(canvas)
}

/// `count` digits decoded from latents of size `latent` drawn from the prior N(0, I) (seeded), on
/// a grid of `ceil(sqrt(count))` columns with 2-pixel gaps.
///
/// A conditional model draws `digit`, or without one the ten digits in ten columns, each row
/// one latent sample (a style) decoded as every digit.
pub fn samples(
    model: &Model,
    latent: usize,
    count: usize,
    seed: u64,
    digit: Option<u8>,
    device: &Device,
) -> anyhow::Result<Canvas> {
    anyhow::ensure!(count > 0, "no samples asked for");
    let classes = model.classes();
    let by_digit = classes > 0 && digit.is_none();
    // Sample i decodes style i (or i / 10 when every row shows the ten digits).
    let styles = if by_digit { count.div_ceil(10) } else { count };
    let drawn = crate::rng::SplitMix64(seed).normals(styles * latent);
    let style = |i: usize| if by_digit { i / 10 } else { i };
    let latents: Vec<f32> = (0..count)
        .flat_map(|i| drawn[style(i) * latent..][..latent].to_vec())
        .collect();
    let z = Tensor::<1>::from_floats(latents.as_slice(), device).reshape([count, latent]);
    let digits: Vec<u8> = (0..count)
        .map(|i| digit.unwrap_or((i % 10) as u8))
        .collect();
    let z = with_condition(z, model.condition(&digits, device));
    let pixels = decoded_pixels(model, z)?;
    let columns = if by_digit {
        count.min(10)
    } else {
        (count as f64).sqrt().ceil().max(1.0) as usize
    };
    let rows = count.div_ceil(columns);
    let (gap, cell) = (2, SIDE + 2);
    let mut canvas = Canvas::new(columns * cell + gap, rows * cell + gap, GRAY);
    for (i, digit) in pixels.chunks_exact(SIDE * SIDE).enumerate() {
        let at = (
            (gap + (i % columns) * cell) as i64,
            (gap + (i / columns) * cell) as i64,
        );
        canvas.gray(at, digit, SIDE, 1);
    }
    Ok(canvas)
}

/// One epoch's losses, as `metrics.csv` records them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossPoint {
    /// Epoch, from 1.
    pub epoch: f32,
    /// Mean training loss.
    pub train: f32,
    /// Mean test loss.
    pub test: f32,
}

/// Reads `epoch`, `train_loss` and `test_loss` from `metrics.csv` text.
pub fn parse_metrics(csv: &str) -> anyhow::Result<Vec<LossPoint>> {
    let mut lines = csv.lines();
    let header: Vec<&str> = lines
        .next()
        .context("metrics.csv is empty")?
        .split(',')
        .collect();
    let column = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .with_context(|| format!("metrics.csv has no `{name}` column"))
    };
    let (epoch, train, test) = (
        column("epoch")?,
        column("train_loss")?,
        column("test_loss")?,
    );
    lines
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, line)| {
            let fields: Vec<&str> = line.split(',').collect();
            let value = |c: usize| -> anyhow::Result<f32> {
                fields
                    .get(c)
                    .and_then(|v| v.trim().parse().ok())
                    .with_context(|| format!("metrics.csv line {}: bad value in column {c}", i + 2))
            };
            Ok(LossPoint {
                epoch: value(epoch)?,
                train: value(train)?,
                test: value(test)?,
            })
        })
        .collect()
}

/// Train (blue) and test (orange) loss per epoch, with the loss range and epochs labelled.
pub fn loss_curves(points: &[LossPoint]) -> Canvas {
    let (w, h, margin) = (640i64, 400i64, 50i64);
    let mut canvas = Canvas::new(w as usize, h as usize, WHITE);
    let finite = |v: f32| v.is_finite().then_some(v);
    let losses: Vec<f32> = points
        .iter()
        .flat_map(|p| [p.train, p.test])
        .filter_map(finite)
        .collect();
    let (lo, hi) = losses
        .iter()
        .fold((f32::MAX, f32::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    // The data's own range (losses run from ~0.002 for the camera denoiser's MSE to ~150 for a
    // VAE's), widened only when every value is about the same.
    let (lo, hi) = if lo <= hi {
        (lo, hi.max(lo + lo.abs().max(1e-6) * 1e-3))
    } else {
        (0.0, 1.0)
    };
    let last = points.last().map_or(1.0, |p| p.epoch.max(2.0));
    let axes = Axes {
        x: (1.0, last),
        y: (lo, hi),
        left: margin,
        top: 20,
        size: (w - margin - 20, h - 20 - margin),
    };
    canvas.line(axes.at(1.0, lo), axes.at(last, lo), BLACK);
    canvas.line(axes.at(1.0, lo), axes.at(1.0, hi), BLACK);
    for (series, color) in [(0, DIGIT_COLORS[0]), (1, DIGIT_COLORS[1])] {
        let value = |p: &LossPoint| if series == 0 { p.train } else { p.test };
        let pts: Vec<(i64, i64)> = points
            .iter()
            .filter(|p| value(p).is_finite())
            .map(|p| axes.at(p.epoch, value(p)))
            .collect();
        for pair in pts.windows(2) {
            canvas.line(pair[0], pair[1], color);
        }
        for &p in &pts {
            canvas.disc(p, 3, color);
        }
    }
    canvas.text((4, 16), &axis_label(hi), 2, BLACK);
    canvas.text((4, h - margin - 12), &axis_label(lo), 2, BLACK);
    canvas.text((margin, h - margin + 10), "1", 2, BLACK);
    canvas.text((w - 60, h - margin + 10), &format!("{last}"), 2, BLACK);
    canvas.text((w / 2 - 40, h - 24), "epoch", 2, BLACK);
    canvas.rect((w - 170, 30), (14, 14), DIGIT_COLORS[0]);
    canvas.text((w - 150, 32), "train", 2, BLACK);
    canvas.rect((w - 170, 54), (14, 14), DIGIT_COLORS[1]);
    canvas.text((w - 150, 56), "test", 2, BLACK);
    canvas
}

/// `value` with three significant digits and no exponent (`146`, `35.2`, `0.0953`, `0.00163`).
fn axis_label(value: f32) -> String {
    let magnitude = if value == 0.0 || !value.is_finite() {
        0
    } else {
        value.abs().log10().floor() as i32
    };
    let decimals = (2 - magnitude).clamp(0, 8) as usize;
    format!("{value:.decimals$}")
}

/// Draws every picture of the run in `run_dir` (test images from `data_dir`) into `out_dir` and
/// returns the files written:
/// - `reconstructions.png`: the first test image of each digit, as the model sees it (noisy,
///   low-resolution) when that differs from the clean image, the model's output, the clean image;
/// - `latent_scatter.png` and `latent_grid.png` for 2-d latents (no grid for a conditional
///   model: its decoder needs a digit);
/// - `samples.png` for VAEs (decoded samples of the prior; a conditional model's: ten rows of
///   styles, each decoded as the ten digits);
/// - `loss_curves.png` when `metrics.csv` records an epoch.
pub fn write_pictures(
    run_dir: &Path,
    data_dir: &Path,
    out_dir: &Path,
    device: &Device,
) -> anyhow::Result<Vec<PathBuf>> {
    machine::check_output_folder(out_dir)?;
    let (config, model) = load_run(run_dir, device).context("loading the run")?;
    // The metrics are read before the folder is made: a damaged file leaves nothing behind.
    let metrics = run_dir.join("metrics.csv");
    let curves = if metrics.exists() {
        let text = std::fs::read_to_string(&metrics)
            .with_context(|| format!("reading {}", metrics.display()))?;
        // No epoch recorded, no curves (not an empty chart).
        let points = parse_metrics(&text)?;
        (!points.is_empty()).then(|| loss_curves(&points))
    } else {
        None
    };
    // Every picture drawn first, then all written as one set: a failure part-way (a folder
    // where a picture goes, a full disk) leaves the pictures already there as they were.
    let mut files: Vec<(PathBuf, Vec<u8>)> = Vec::new();
    let mut save = |name: &str, canvas: &Canvas| -> anyhow::Result<()> {
        files.push((out_dir.join(name), canvas.png()?));
        Ok(())
    };
    if let Some(curves) = curves {
        save("loss_curves.png", &curves)?;
    }
    if let crate::model::ModelConfig::CameraDenoiser(_) = config.model {
        save("denoised.png", &camera_crops(&model, data_dir, device)?)?;
        return write_pictures_set(out_dir, files);
    }
    let test = Mnist::load(data_dir, Split::Test).context("loading the test images")?;

    let firsts: Vec<usize> = (0..10u8)
        .filter_map(|d| test.labels.iter().position(|&l| l == d))
        .collect();
    let clean = test.batch(&firsts, device);
    let corruption = config.model.corruption();
    let input = corruption.apply(clean.clone(), &mut crate::rng::SplitMix64(1));
    let condition = model.condition(&test.digits(&firsts), device);
    let output = model.reconstruct(input.clone(), condition);
    let rows = labelled_rows(
        corruption,
        to_images(input)?,
        to_images(output)?,
        to_images(clean)?,
    );
    save("reconstructions.png", &reconstructions(&rows))?;

    if config.model.latent() == Some(2) {
        let n = test.len().min(5000);
        let indices: Vec<usize> = (0..n).collect();
        let mut means = Vec::with_capacity(n);
        for chunk in indices.chunks(500) {
            let code = model
                .encode(test.batch(chunk, device))
                .context("a family with a latent has an encoder")?;
            let values = tensor_values(code)?;
            means.extend(values.chunks_exact(2).map(|m| [m[0], m[1]]));
        }
        save(
            "latent_scatter.png",
            &latent_scatter(&means, &test.labels[..n]),
        )?;
        // A conditional decoder needs a digit for each latent: its samples sheet shows the
        // plane's styles decoded as every digit instead.
        if model.classes() == 0 {
            save("latent_grid.png", &latent_grid(&model, 15, 3.0, device)?)?;
        }
    }
    if let (true, Some(latent)) = (config.model.is_variational(), config.model.latent()) {
        let count = if model.classes() > 0 { 100 } else { 64 };
        save(
            "samples.png",
            &samples(&model, latent, count, 0, None, device)?,
        )?;
    }
    write_pictures_set(out_dir, files)
}

/// Makes `out_dir` and writes `files` into it, all or none ([`machine::write_files`]); their
/// paths.
fn write_pictures_set(
    out_dir: &Path,
    files: Vec<(PathBuf, Vec<u8>)>,
) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    machine::write_files(&files)?;
    Ok(files.into_iter().map(|(path, _)| path).collect())
}

/// Noisy / denoised / clean rows of 128x128 crops of the held-out photographs at each of the
/// noise levels 15, 25 and 50.
fn camera_crops(model: &Model, data_dir: &Path, device: &Device) -> anyhow::Result<Canvas> {
    const CROP: usize = 128;
    let images = crate::natural::load(data_dir, &crate::natural::HELD_OUT)?;
    let mut rows: [Vec<Image>; 3] = Default::default();
    let mut rng = crate::rng::SplitMix64(1);
    for image in &images {
        let (x0, y0) = (
            image.width.saturating_sub(CROP) / 2,
            image.height.saturating_sub(CROP) / 2,
        );
        let (w, h) = (CROP.min(image.width), CROP.min(image.height));
        let crop: Vec<f32> = (0..h)
            .flat_map(|y| image.pixels[(y0 + y) * image.width + x0..][..w].to_vec())
            .collect();
        for sigma in [15.0, 25.0, 50.0] {
            let noisy = crate::natural::add_noise(&crop, sigma, &mut rng);
            rows[1].push(crate::training::denoise_photo(model, &noisy, w, h, device)?);
            rows[0].push(noisy);
            rows[2].push(crop.clone());
        }
    }
    let [noisy, denoised, clean] = rows;
    Ok(reconstructions(&[
        ("noisy", noisy),
        ("denoised", denoised),
        ("clean", clean),
    ]))
}

/// The rows of `reconstructions.png`, top to bottom: what the model saw (when it is not the clean
/// image), what it made, and the clean image.
fn labelled_rows(
    corruption: Corruption,
    input: Vec<Image>,
    output: Vec<Image>,
    clean: Vec<Image>,
) -> Vec<(&'static str, Vec<Image>)> {
    match corruption {
        Corruption::None => vec![("input", clean), ("output", output)],
        Corruption::Noise { .. } => {
            vec![("noisy", input), ("denoised", output), ("clean", clean)]
        }
        Corruption::Downsample => {
            vec![
                ("low-res", input),
                ("upscaled", output),
                ("original", clean),
            ]
        }
    }
}

/// A batch of square single-channel images as one vector each.
fn to_images(t: Tensor<4>) -> anyhow::Result<Vec<Image>> {
    let [_, _, h, w] = t.dims();
    Ok(tensor_values(t)?
        .chunks_exact(h * w)
        .map(<[f32]>::to_vec)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_discs_and_text_land_where_they_should() {
        let mut c = Canvas::new(20, 10, WHITE);
        c.line((0, 0), (19, 9), BLACK);
        assert_eq!(c.get(0, 0), Some(BLACK));
        assert_eq!(c.get(19, 9), Some(BLACK));
        assert_eq!(c.get(19, 0), Some(WHITE));
        c.disc((10, 5), 2, [1, 2, 3]);
        assert_eq!(c.get(12, 5), Some([1, 2, 3]));
        assert_eq!(c.get(12, 7), Some(WHITE), "outside the radius");
        // Drawing off the canvas is ignored.
        c.disc((-5, -5), 3, BLACK);
        c.line((-10, 3), (30, 3), [9, 9, 9]);
        assert_eq!(c.get(0, 3), Some([9, 9, 9]));
        let mut t = Canvas::new(8, 5, WHITE);
        t.text((0, 0), "1-", 1, BLACK);
        // '1': column 1 lit on every row; '-' at x 4..7 on row 2 only.
        assert_eq!((0..5).filter(|&y| t.get(1, y) == Some(BLACK)).count(), 5);
        assert_eq!(t.get(5, 2), Some(BLACK));
        assert_eq!(t.get(5, 1), Some(WHITE));
    }

    #[test]
    fn png_round_trips() {
        let mut c = Canvas::new(3, 2, WHITE);
        c.set(2, 1, [10, 20, 30]);
        let png = c.png().expect("encodes");
        let mut reader = png::Decoder::new(std::io::Cursor::new(png))
            .read_info()
            .expect("header");
        let mut buf = vec![0; reader.output_buffer_size().expect("size")];
        let info = reader.next_frame(&mut buf).expect("frame");
        assert_eq!(
            (info.width, info.height, info.color_type),
            (3, 2, png::ColorType::Rgb)
        );
        assert_eq!(&buf[15..18], &[10, 20, 30]);
    }

    #[test]
    fn scatter_colours_points_by_digit() {
        let c = latent_scatter(&[[0.0, 0.0], [2.0, 2.0]], &[3, 7]);
        let count = |color: Rgb| {
            (0..c.height())
                .flat_map(|y| (0..c.width()).map(move |x| (x, y)))
                .filter(|&(x, y)| c.get(x, y) == Some(color))
                .count()
        };
        // A radius-1 disc is 5 pixels, plus the legend square (14 x 14).
        assert_eq!(count(DIGIT_COLORS[3]), 5 + 196);
        assert_eq!(count(DIGIT_COLORS[7]), 5 + 196);
        assert_eq!(count(DIGIT_COLORS[0]), 196);
    }

    #[test]
    fn samples_fill_a_square_sheet() {
        let device = Device::flex();
        let model = crate::model::ModelConfig::default_for("fc-vae")
            .expect("a family")
            .init(&device);
        let sheet = samples(&model, 2, 5, 1, None, &device).expect("decodes");
        // 3 columns, 2 rows of 28-pixel digits with 2-pixel gaps.
        assert_eq!((sheet.width(), sheet.height()), (92, 62));
        assert_eq!(
            sheet,
            samples(&model, 2, 5, 1, None, &device).expect("decodes"),
            "seeded"
        );
        assert!(
            samples(&model, 2, 0, 1, None, &device).is_err(),
            "no samples"
        );
        assert!(
            samples(&model, 3, 4, 1, None, &device).is_err(),
            "wrong latent"
        );
    }

    #[test]
    fn only_a_plain_2d_latent_has_a_plane_to_draw() {
        use crate::model::{ConvVaeConfig, DenseAeConfig, ModelConfig};
        let device = Device::flex();
        let wide = ModelConfig::DenseAe(DenseAeConfig::new().with_latent(8)).init(&device);
        let conditional =
            ModelConfig::ConvVae(ConvVaeConfig::new().with_conditional(Some(true))).init(&device);
        for model in [wide, conditional] {
            let err = latent_grid(&model, 3, 1.0, &device).expect_err("no plane");
            assert!(err.to_string().contains("decoder"), "{err}");
        }
        let plain = ModelConfig::ConvVae(ConvVaeConfig::new()).init(&device);
        assert!(latent_grid(&plain, 3, 1.0, &device).is_ok());
    }

    #[test]
    fn rows_are_labelled_with_what_they_show() {
        let (i, o, c) = (vec![vec![0.1]], vec![vec![0.2]], vec![vec![0.3]]);
        let rows = labelled_rows(Corruption::None, i.clone(), o.clone(), c.clone());
        assert_eq!(rows, [("input", c.clone()), ("output", o.clone())]);
        let rows = labelled_rows(Corruption::Downsample, i.clone(), o.clone(), c.clone());
        assert_eq!(rows, [("low-res", i), ("upscaled", o), ("original", c)]);
    }

    #[test]
    fn metrics_are_parsed_by_column_name() {
        let csv = "epoch,train_loss,train_reconstruction,train_kl,test_loss\n1,200.5,1,2,190\n2,180,1,2,175.25\n";
        let points = parse_metrics(csv).expect("parses");
        assert_eq!(
            points,
            [
                LossPoint {
                    epoch: 1.0,
                    train: 200.5,
                    test: 190.0
                },
                LossPoint {
                    epoch: 2.0,
                    train: 180.0,
                    test: 175.25
                }
            ]
        );
        assert!(
            parse_metrics("epoch,train_loss\n1,2\n").is_err(),
            "no test_loss"
        );
        let bad = parse_metrics("epoch,train_loss,test_loss\n1,x,2\n").expect_err("bad value");
        assert!(bad.to_string().contains("line 2"), "{bad}");
        // A curve with a single epoch or NaN losses still draws.
        let c = loss_curves(&[LossPoint {
            epoch: 1.0,
            train: f32::NAN,
            test: 3.0,
        }]);
        assert_eq!((c.width(), c.height()), (640, 400));
    }

    #[test]
    fn small_losses_span_the_whole_plot() {
        // A camera denoiser's MSE: ~0.002, falling by a fifth. The first test point is the
        // highest value, the last the lowest: they must sit at the top and the bottom of the
        // plot, not on one line at the bottom of a 0..1 axis.
        let points: Vec<LossPoint> = (1..=10)
            .map(|e| LossPoint {
                epoch: e as f32,
                train: 0.0020,
                test: 0.0020 - 0.00004 * e as f32,
            })
            .collect();
        let c = loss_curves(&points);
        let test_color = DIGIT_COLORS[1];
        let rows_with_test: Vec<usize> = (0..c.height())
            .filter(|&y| {
                // Not the legend's swatch (top right).
                let legend = |x: usize| x >= c.width() - 170 && y < 70;
                (0..c.width()).any(|x| !legend(x) && c.get(x, y) == Some(test_color))
            })
            .collect();
        let (top, bottom) = (rows_with_test[0], rows_with_test[rows_with_test.len() - 1]);
        assert!(bottom - top > 250, "test curve spans rows {top}..{bottom}");
        assert_eq!(axis_label(0.00163), "0.00163");
        assert_eq!(axis_label(0.0953), "0.0953");
        assert_eq!(axis_label(35.2), "35.2");
        assert_eq!(axis_label(146.53), "147");
        assert_eq!(axis_label(0.0), "0.00");
    }
}
