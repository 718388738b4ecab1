//! The q8 model blob: a versioned, little-endian int8 decoder (spec: `firmware/core/Q8.md`).
//!
//! [`Model::parse`] validates the whole blob once (magic, version, sizes, CRC, layer chain,
//! working-memory needs) and then hands out zero-copy views into it, so the blob can stay in
//! flash. With the `std` feature, [`write`] builds a blob from quantized layers.

/// The four bytes every q8 blob starts with.
pub const MAGIC: [u8; 4] = *b"AEQ8";
/// The newest format version this crate reads and writes: 3, a conditional decoder (header
/// field `classes`). The writer still writes unconditional decoders as version 2, which every
/// parser of this format reads; a version-2 parser refuses a conditional blob instead of
/// decoding its one-hot digit as two more latent values.
pub const VERSION: u16 = 3;
/// The oldest format version this crate reads (an unconditional decoder).
pub const FIRST_VERSION: u16 = 2;
/// Size of the fixed header.
pub const HEADER_LEN: usize = 32;
/// Size of one layer record.
pub const LAYER_RECORD_LEN: usize = 32;
/// Most layers a blob may hold.
pub const MAX_LAYERS: usize = 16;
/// Largest latent size a blob may declare.
pub const MAX_LATENT: usize = 64;
/// The latent scales a blob may carry: outside them every latent would saturate to +-127
/// or round to 0 (the exporter's floor is the lower end).
pub const LATENT_SCALES: core::ops::RangeInclusive<f32> = 1e-8..=1e6;
/// Size of the output table (int8 logit -> u8 pixel).
pub const TABLE_LEN: usize = 256;

const KIND_DENSE: u8 = 1;
const KIND_CONV: u8 = 2;
/// The most elements a layer's input, output or weights may have (16 Mi: far beyond any
/// microcontroller's memory), so that no size computed from them overflows a 32-bit `usize`.
const MAX_LAYER_ELEMENTS: u64 = 1 << 24;
const FLAG_RELU: u8 = 1;

/// Why a blob was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum Error {
    /// The blob is shorter than its header says (or than a header).
    Truncated,
    /// The blob does not start with [`MAGIC`].
    BadMagic,
    /// The blob's version is not one this crate reads ([`FIRST_VERSION`]..=[`VERSION`]).
    UnsupportedVersion(u16),
    /// The stored CRC does not match the contents.
    BadCrc,
    /// A header field is out of range; the string names it.
    BadHeader(&'static str),
    /// Layer `index` is malformed; the string says how.
    BadLayer {
        /// Position of the layer in the table.
        index: u16,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A latent vector of the wrong length was given.
    LatentLength {
        /// What the model takes.
        expected: u16,
        /// What was given.
        got: u16,
    },
    /// A latent value is NaN or infinite.
    NonFiniteLatent,
    /// A digit asked of a model that does not know it: `classes` is the number of digits the
    /// model was trained on (0: the model is not conditional).
    UnknownDigit {
        /// The digit asked for.
        digit: u8,
        /// Digits the model knows.
        classes: u16,
    },
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Error::Truncated => write!(f, "q8 blob is truncated"),
            Error::BadMagic => write!(f, "not a q8 blob (bad magic)"),
            Error::UnsupportedVersion(v) => write!(f, "unsupported q8 version {v}"),
            Error::BadCrc => write!(f, "q8 blob CRC mismatch (corrupt blob)"),
            Error::BadHeader(what) => write!(f, "bad q8 header: {what}"),
            Error::BadLayer { index, reason } => write!(f, "bad q8 layer {index}: {reason}"),
            Error::LatentLength { expected, got } => {
                write!(f, "latent has {got} values, the model takes {expected}")
            }
            Error::NonFiniteLatent => write!(f, "latent contains NaN or infinity"),
            Error::UnknownDigit { classes: 0, .. } => {
                write!(
                    f,
                    "the model is not conditional: it cannot be asked for a digit"
                )
            }
            Error::UnknownDigit { digit, classes } => {
                write!(f, "digit {digit} is not one of the model's 0..{classes}")
            }
        }
    }
}

#[cfg(any(test, feature = "std"))]
impl std::error::Error for Error {}

/// What a layer computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum LayerKind {
    /// Fully connected: `C_out x C_in` weights.
    Dense,
    /// 3x3-style convolution, stride 1, with zero padding and nearest upsampling of its input.
    Conv {
        /// Kernel size `k` (square).
        kernel: u8,
        /// Zero padding on each side.
        padding: u8,
        /// Nearest-neighbour upsampling factor applied to the input first (1 = none).
        upsample: u8,
    },
}

/// A tensor shape, channels first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Shape {
    /// Channels (dense: features).
    pub c: u16,
    /// Height (dense: 1).
    pub h: u16,
    /// Width (dense: 1).
    pub w: u16,
}

impl Shape {
    /// Number of elements (saturating: a crafted shape cannot overflow a 32-bit `usize`).
    pub const fn len(&self) -> usize {
        (self.c as usize)
            .saturating_mul(self.h as usize)
            .saturating_mul(self.w as usize)
    }

    /// Bytes the decoder stores for these activations with `padding` extra columns on each side
    /// of every row: `h` rows of `w + 2 * padding` pixels of `c` channels (saturating).
    pub const fn stored_len(&self, padding: usize) -> usize {
        let width = (self.w as usize).saturating_add(padding.saturating_mul(2));
        (self.c as usize)
            .saturating_mul(self.h as usize)
            .saturating_mul(width)
    }

    /// Whether the shape holds no element.
    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A zero-copy view of one layer of a parsed [`Model`].
#[derive(Debug, Clone, Copy)]
pub struct Layer<'a> {
    /// What the layer computes.
    pub kind: LayerKind,
    /// Whether a ReLU follows.
    pub relu: bool,
    /// Zero point of the input activations.
    pub input_zero_point: i8,
    /// Zero point of the output activations.
    pub output_zero_point: i8,
    /// Input shape.
    pub input: Shape,
    /// Output shape.
    pub output: Shape,
    weights: &'a [u8],
    params: &'a [u8],
    folded: &'a [u8],
}

impl<'a> Layer<'a> {
    /// Int8 weights as stored (`[C_out][C_in]` or `[C_out][C_in][k][k]`), bytes to read as `i8`.
    #[inline]
    pub fn weights(&self) -> &'a [u8] {
        self.weights
    }

    /// A conv layer's folded weights (i16, little-endian; layout in [`crate::fold`]); empty for
    /// a dense layer.
    #[inline]
    pub fn folded(&self) -> &'a [u8] {
        self.folded
    }

    /// `(bias, multiplier, shift)` of output channel `o`, or `None` past the layer's
    /// `C_out` channels (or past its parameters, for a layer whose `output` was changed).
    pub fn params(&self, o: usize) -> Option<(i32, i32, i32)> {
        if o >= self.output.c as usize {
            return None;
        }
        // Read with bounds: `output` is a public field a caller may have changed.
        let p = self.params.get(o * 12..)?.get(..12)?;
        Some((read_i32(p, 0), read_i32(p, 4), read_i32(p, 8)))
    }

    /// [`Layer::params`] of a channel the caller knows to exist (`o < C_out`, as in every loop
    /// of the decoder over a layer's channels): the parser sized the parameters to `C_out`.
    #[inline]
    pub(crate) fn channel(&self, o: usize) -> (i32, i32, i32) {
        let p = &self.params[o * 12..o * 12 + 12];
        (read_i32(p, 0), read_i32(p, 4), read_i32(p, 8))
    }

    /// Multiply-accumulate operations this layer performs per decode with folded weights (see
    /// [`crate::fold`]): fewer than [`Layer::macs`] for upsampling convs; border taps that read
    /// padding are counted too.
    pub fn folded_macs(&self) -> usize {
        match self.kind {
            LayerKind::Dense => self.macs(),
            LayerKind::Conv {
                kernel,
                padding,
                upsample,
            } => {
                let phases = |len: u16| {
                    (0..upsample as usize).map(move |p| {
                        let axis = crate::fold::AxisPhase::new(p, kernel, padding, upsample);
                        (len as usize).saturating_sub(p).div_ceil(upsample as usize) * axis.span
                    })
                };
                let (ys, xs): (usize, usize) =
                    (phases(self.output.h).sum(), phases(self.output.w).sum());
                (ys * xs).saturating_mul(self.input.c as usize * self.output.c as usize)
            }
        }
    }

    /// Columns the decoder stores on each side of every row of this layer's input, filled with
    /// the input zero point, so that every output's taps lie inside a stored row
    /// ([`crate::decoder`]): the farthest the taps reach past either end of a row; 0 for dense.
    pub fn input_padding(&self) -> usize {
        match self.kind {
            LayerKind::Dense => 0,
            LayerKind::Conv {
                kernel,
                padding,
                upsample,
            } => crate::fold::input_padding(
                (kernel, padding, upsample),
                self.input.w as usize,
                self.output.w as usize,
            ),
        }
    }

    /// Multiply-accumulate operations of the convolution as defined (taps x outputs), the usual
    /// measure of a layer's work.
    pub fn macs(&self) -> usize {
        match self.kind {
            LayerKind::Dense => self.input.len().saturating_mul(self.output.len()),
            LayerKind::Conv { kernel, .. } => self
                .output
                .len()
                .saturating_mul(self.input.c as usize * kernel as usize * kernel as usize),
        }
    }
}

/// Bytes at a 4-byte-aligned address. A q8 blob should sit at one: the writer aligns the folded
/// weights within the blob, and the Armv7E-M kernels load them with `ldrd` and `ldm`, which need
/// aligned addresses (an unaligned blob decodes the same, on slower paths). `include_bytes!` and
/// byte arrays promise no alignment, so a firmware keeps its blob in one of these:
///
/// ```
/// use firmware_core::q8::Aligned;
/// // In a firmware: `&Aligned(*include_bytes!("model.q8")).0`.
/// static MODEL: &[u8] = &Aligned([0x41, 0x45, 0x51, 0x38, 2, 0]).0;
/// assert!((MODEL.as_ptr() as usize).is_multiple_of(4));
/// ```
#[derive(Debug, Clone, Copy)]
#[repr(C, align(4))]
pub struct Aligned<T: ?Sized>(pub T);

/// A validated q8 blob. Cheap to copy; borrows the bytes.
#[derive(Debug, Clone, Copy)]
pub struct Model<'a> {
    blob: &'a [u8],
    layer_count: u16,
    latent_dim: u16,
    classes: u16,
    latent_scale: f32,
    output: Shape,
    table: &'a [u8],
    working_bytes: usize,
}

fn read_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn read_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn read_i32(b: &[u8], at: usize) -> i32 {
    read_u32(b, at) as i32
}

/// CRC-32 (IEEE 802.3, reflected, the one zlib and PNG use), bitwise so it needs no table.
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xEDB8_8320 & mask);
        }
    }
    !crc
}

/// Returns `blob[offset..offset + len]` if it lies before the CRC.
fn section(blob: &[u8], offset: u32, len: usize, index: u16) -> Result<&[u8], Error> {
    let start = offset as usize;
    let end = start.checked_add(len).ok_or(Error::BadLayer {
        index,
        reason: "section size overflows",
    })?;
    if end > blob.len() - 4 {
        return Err(Error::BadLayer {
            index,
            reason: "section lies outside the blob",
        });
    }
    Ok(&blob[start..end])
}

impl<'a> Model<'a> {
    /// Validates `blob` and returns a view of it. Never panics, whatever the bytes.
    pub fn parse(blob: &'a [u8]) -> Result<Model<'a>, Error> {
        if blob.len() < HEADER_LEN + 4 {
            return Err(if blob.len() >= 4 && blob[..4] != MAGIC {
                Error::BadMagic
            } else {
                Error::Truncated
            });
        }
        if blob[..4] != MAGIC {
            return Err(Error::BadMagic);
        }
        let version = read_u16(blob, 4);
        if !(FIRST_VERSION..=VERSION).contains(&version) {
            return Err(Error::UnsupportedVersion(version));
        }
        let total = read_u32(blob, 24) as usize;
        if total > blob.len() {
            return Err(Error::Truncated);
        }
        if total < HEADER_LEN + 4 {
            return Err(Error::BadHeader("total length"));
        }
        // Trailing bytes beyond `total` (e.g. flash padding) are ignored.
        let blob = &blob[..total];
        let stored_crc = read_u32(blob, total - 4);
        if crc32(&blob[..total - 4]) != stored_crc {
            return Err(Error::BadCrc);
        }

        let layer_count = read_u16(blob, 6);
        if layer_count == 0 || layer_count as usize > MAX_LAYERS {
            return Err(Error::BadHeader("layer count"));
        }
        let latent_dim = read_u16(blob, 8);
        if latent_dim == 0 || latent_dim as usize > MAX_LATENT {
            return Err(Error::BadHeader("latent size"));
        }
        // Version 2 is unconditional (its bytes 28..32 were reserved, 0); version 3 conditional.
        let classes = read_u16(blob, 28);
        let conditional = version >= 3;
        if (classes > 0) != conditional || classes >= latent_dim || read_u16(blob, 30) != 0 {
            return Err(Error::BadHeader("classes"));
        }
        let output = Shape {
            c: read_u16(blob, 10),
            h: read_u16(blob, 12),
            w: read_u16(blob, 14),
        };
        if output.c != 1 || output.is_empty() {
            return Err(Error::BadHeader("output shape"));
        }
        let latent_scale = f32::from_bits(read_u32(blob, 16));
        if !LATENT_SCALES.contains(&latent_scale) {
            return Err(Error::BadHeader("latent scale"));
        }
        if HEADER_LEN + LAYER_RECORD_LEN * layer_count as usize > total - 4 {
            return Err(Error::Truncated);
        }
        let table = section(blob, read_u32(blob, 20), TABLE_LEN, layer_count)
            .map_err(|_| Error::BadHeader("output table offset"))?;

        let mut model = Model {
            blob,
            layer_count,
            latent_dim,
            classes,
            latent_scale,
            output,
            table,
            working_bytes: 0,
        };
        let mut previous: Option<Layer<'a>> = None;
        for i in 0..layer_count {
            let layer = model.read_layer(i)?;
            let bad = |reason| Error::BadLayer { index: i, reason };
            // Checked once here, not on every `layer()` call a decode makes.
            for o in 0..layer.output.c as usize {
                let (_, multiplier, shift) = layer.channel(o);
                if multiplier < 1 << 30 || !(1..=62).contains(&(31i64 - shift as i64)) {
                    return Err(bad("requantization multiplier or shift out of range"));
                }
            }
            match previous {
                None => {
                    if layer.kind != LayerKind::Dense
                        || layer.input.len() != latent_dim as usize
                        || layer.input_zero_point != 0
                    {
                        return Err(bad("first layer must be dense on the latent, zero point 0"));
                    }
                }
                Some(p) => {
                    if p.output.len() != layer.input.len() {
                        return Err(bad("input size differs from the previous output"));
                    }
                    if p.output_zero_point != layer.input_zero_point {
                        return Err(bad("input zero point differs from the previous output"));
                    }
                    // A conv writes the rows its reader reads (padding columns included).
                    let convs = p.kind != LayerKind::Dense && layer.kind != LayerKind::Dense;
                    if convs && p.output != layer.input {
                        return Err(bad("input shape differs from the previous conv's output"));
                    }
                }
            }
            // Working memory, as the decoder stores activations (with the columns of padding
            // their reader needs): the previous layer held its input and this layer's input at
            // once; the last layer holds only its input (it writes pixels into the caller's buffer).
            let input = layer.input.stored_len(layer.input_padding());
            if let Some(p) = previous {
                let live = p.input.stored_len(p.input_padding()).saturating_add(input);
                model.working_bytes = model.working_bytes.max(live);
            }
            if i + 1 == layer_count {
                model.working_bytes = model.working_bytes.max(input);
            }
            previous = Some(layer);
        }
        let last = previous.ok_or(Error::BadHeader("layer count"))?;
        if last.output != output || last.relu {
            return Err(Error::BadLayer {
                index: layer_count - 1,
                reason: "last layer must produce the output shape, without ReLU",
            });
        }
        Ok(model)
    }

    fn read_layer(&self, index: u16) -> Result<Layer<'a>, Error> {
        let bad = |reason| Error::BadLayer { index, reason };
        let r = &self.blob[HEADER_LEN + LAYER_RECORD_LEN * index as usize..][..LAYER_RECORD_LEN];
        let shape = |at| Shape {
            c: read_u16(r, at),
            h: read_u16(r, at + 2),
            w: read_u16(r, at + 4),
        };
        let (input, output) = (shape(8), shape(14));
        if input.is_empty() || output.is_empty() {
            return Err(bad("empty shape"));
        }
        // Sizes stay far from `usize` overflow on 32-bit targets, where every count below is
        // computed.
        let elements = |s: Shape| s.c as u64 * s.h as u64 * s.w as u64;
        let weight_count = output.c as u64 * input.c as u64 * (r[2] as u64).max(1).pow(2);
        if elements(input).max(elements(output)).max(weight_count) > MAX_LAYER_ELEMENTS {
            return Err(bad("layer larger than 2^24 elements"));
        }
        if r[7] != 0 {
            return Err(bad("reserved byte is not 0"));
        }
        let (k, pad, up) = (r[2], r[3], r[4]);
        let kind = match r[0] {
            KIND_DENSE => {
                if input.h != 1 || input.w != 1 || output.h != 1 || output.w != 1 {
                    return Err(bad("dense shapes must be [features, 1, 1]"));
                }
                if k != 0 || pad != 0 || up != 1 || read_u32(r, 28) != 0 {
                    return Err(bad(
                        "dense kernel, padding, upsampling or folded offset not 0, 0, 1, 0",
                    ));
                }
                LayerKind::Dense
            }
            KIND_CONV => {
                if !(1..=7).contains(&k) || up == 0 || up > 8 || pad >= k {
                    return Err(bad("conv kernel, padding or upsampling out of range"));
                }
                let side = |n: u16| (n as i64) * up as i64 + 2 * pad as i64 - k as i64 + 1;
                if side(input.h) != output.h as i64 || side(input.w) != output.w as i64 {
                    return Err(bad("conv output size does not follow from its input"));
                }
                LayerKind::Conv {
                    kernel: k,
                    padding: pad,
                    upsample: up,
                }
            }
            _ => return Err(bad("unknown layer kind")),
        };
        if r[1] & !FLAG_RELU != 0 {
            return Err(bad("unknown flags"));
        }
        let weight_len = match kind {
            LayerKind::Dense => input.len() * output.c as usize,
            LayerKind::Conv { kernel, .. } => {
                output.c as usize * input.c as usize * kernel as usize * kernel as usize
            }
        };
        let params_offset = read_u32(r, 24);
        if !params_offset.is_multiple_of(4) {
            return Err(bad("parameters are not 4-byte aligned"));
        }
        let params = section(self.blob, params_offset, output.c as usize * 12, index)?;
        let folded = match kind {
            LayerKind::Dense => &[][..],
            LayerKind::Conv {
                kernel,
                padding,
                upsample,
            } => {
                let len = crate::fold::folded_len(
                    (kernel, padding, upsample),
                    input.c as usize,
                    output.c as usize,
                );
                section(self.blob, read_u32(r, 28), 2 * len, index)?
            }
        };
        Ok(Layer {
            kind,
            relu: r[1] & FLAG_RELU != 0,
            folded,
            input_zero_point: r[5] as i8,
            output_zero_point: r[6] as i8,
            input,
            output,
            weights: section(self.blob, read_u32(r, 20), weight_len, index)?,
            params,
        })
    }

    /// Size of the latent vector the decoder takes.
    pub fn latent_dim(&self) -> usize {
        self.latent_dim as usize
    }

    /// Digits a conditional decoder was trained on: the last `classes` of its
    /// [`Model::latent_dim`] inputs are the digit's one-hot vector ([`Model::digit_latent`]).
    /// 0 for a decoder that takes a latent alone.
    pub fn classes(&self) -> usize {
        self.classes as usize
    }

    /// Fills `out` (of [`Model::latent_dim`] values) with the input that asks a conditional
    /// decoder for `digit` in the style `style` (`latent_dim - classes` values): the style, then
    /// the digit's one-hot vector.
    ///
    /// # Errors
    /// [`Error::UnknownDigit`] for a model that is not conditional or a digit past its classes,
    /// [`Error::LatentLength`] when `style` or `out` has the wrong length.
    pub fn digit_latent(&self, style: &[f32], digit: u8, out: &mut [f32]) -> Result<(), Error> {
        if u16::from(digit) >= self.classes {
            return Err(Error::UnknownDigit {
                digit,
                classes: self.classes,
            });
        }
        let styles = self.latent_dim - self.classes;
        let length = |expected: u16, got: usize| Error::LatentLength {
            expected,
            got: got.min(u16::MAX as usize) as u16,
        };
        if style.len() != styles as usize {
            return Err(length(styles, style.len()));
        }
        if out.len() != self.latent_dim as usize {
            return Err(length(self.latent_dim, out.len()));
        }
        let (head, one_hot) = out.split_at_mut(styles as usize);
        head.copy_from_slice(style);
        for (i, v) in one_hot.iter_mut().enumerate() {
            *v = if i == usize::from(digit) { 1.0 } else { 0.0 };
        }
        Ok(())
    }

    /// The float step of one int8 latent unit.
    pub fn latent_scale(&self) -> f32 {
        self.latent_scale
    }

    /// Shape of the decoded image (`c` is 1).
    pub fn output_shape(&self) -> Shape {
        self.output
    }

    /// Number of layers.
    pub fn layer_count(&self) -> usize {
        self.layer_count as usize
    }

    /// Layer `index` (`None` past the end). Layers were validated by [`Model::parse`].
    pub fn layer(&self, index: usize) -> Option<Layer<'a>> {
        if index >= self.layer_count as usize {
            return None;
        }
        self.read_layer(index as u16).ok()
    }

    /// The 256-entry table that maps the last layer's int8 output (`y + 128`) to a pixel.
    pub fn output_table(&self) -> &'a [u8] {
        self.table
    }

    /// Working memory (bytes) a decode needs when each layer's input and output sit side by side
    /// in one arena, as the decoder stores them (with the padding columns of the conv that reads
    /// them, [`Shape::stored_len`]): the largest `input + output` of any layer but the last, and
    /// the last layer's input (its output goes through the output table straight to the pixels).
    pub fn working_bytes(&self) -> usize {
        self.working_bytes
    }

    /// Multiply-accumulate operations per decode, as the layers define them ([`Layer::macs`]).
    pub fn macs(&self) -> usize {
        (0..self.layer_count())
            .filter_map(|i| self.layer(i))
            .map(|l| l.macs())
            .fold(0, usize::saturating_add)
    }

    /// Multiply-accumulate operations per decode with folded weights ([`Layer::folded_macs`]).
    pub fn folded_macs(&self) -> usize {
        (0..self.layer_count())
            .filter_map(|i| self.layer(i))
            .map(|l| l.folded_macs())
            .fold(0, usize::saturating_add)
    }

    /// The whole blob, as validated.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.blob
    }

    /// Quantizes float latents into the model's int8 input: `round(z / scale)` clamped to
    /// [-127, 127]. Uses plain IEEE f32 operations, so host and target agree bit for bit.
    pub fn quantize_latent(&self, z: &[f32], out: &mut [i8]) -> Result<(), Error> {
        let d = self.latent_dim as usize;
        for got in [z.len(), out.len()] {
            if got != d {
                return Err(Error::LatentLength {
                    expected: self.latent_dim,
                    got: got.min(u16::MAX as usize) as u16,
                });
            }
        }
        // Checked before anything is written: an error leaves `out` as it was.
        if !z.iter().all(|v| v.is_finite()) {
            return Err(Error::NonFiniteLatent);
        }
        for (q, &v) in out.iter_mut().zip(z) {
            *q = round_half_away(v / self.latent_scale).clamp(-127, 127) as i8;
        }
        Ok(())
    }
}

/// `x` rounded half away from zero, clamped to [-128, 128] first. Exact: the fraction
/// `x - trunc(x)` of an f32 this small is representable (adding 0.5 instead would round
/// 0.49999997 up to 1).
fn round_half_away(x: f32) -> i32 {
    let x = x.clamp(-128.0, 128.0);
    let whole = x as i32;
    let fraction = x - whole as f32;
    whole + (fraction >= 0.5) as i32 - (fraction <= -0.5) as i32
}

/// Splits a real positive factor into a Q31 multiplier in `[2^30, 2^31)` and a power-of-two
/// shift, so that `factor ~= multiplier * 2^shift / 2^31` (see `Q8.md`, "Arithmetic").
///
/// Returns `None` when the factor is not finite and positive or needs a shift outside the range
/// the kernels support.
pub fn quantize_multiplier(factor: f64) -> Option<(i32, i32)> {
    if !(factor.is_finite() && factor > 0.0) {
        return None;
    }
    let mut shift = 0i32;
    let mut m = factor;
    while m >= 1.0 {
        m /= 2.0;
        shift += 1;
    }
    while m < 0.5 {
        m *= 2.0;
        shift -= 1;
    }
    // m in [0.5, 1): scale to Q31, rounding; rounding up to 2^31 moves one binade.
    let mut q = (m * (1u64 << 31) as f64 + 0.5) as i64;
    if q == 1i64 << 31 {
        q /= 2;
        shift += 1;
    }
    let n = 31 - shift;
    if !(1..=62).contains(&n) {
        return None;
    }
    Some((q as i32, shift))
}

#[cfg(any(test, feature = "std"))]
pub use writer::{LayerSpec, write, write_conditional};

#[cfg(any(test, feature = "std"))]
mod writer {
    use super::*;

    /// One quantized layer, as the exporter hands it to [`write`].
    #[derive(Debug, Clone)]
    pub struct LayerSpec {
        /// What the layer computes.
        pub kind: LayerKind,
        /// Whether a ReLU follows.
        pub relu: bool,
        /// Input shape.
        pub input: Shape,
        /// Output shape.
        pub output: Shape,
        /// Input zero point.
        pub input_zero_point: i8,
        /// Output zero point.
        pub output_zero_point: i8,
        /// Int8 weights, `[C_out][C_in]` or `[C_out][C_in][k][k]`.
        pub weights: Vec<i8>,
        /// Per-output-channel int32 bias (input zero point folded in).
        pub bias: Vec<i32>,
        /// Per-output-channel Q31 multiplier.
        pub multiplier: Vec<i32>,
        /// Per-output-channel power-of-two shift.
        pub shift: Vec<i32>,
    }

    fn put_u16(out: &mut Vec<u8>, v: usize) -> Result<(), Error> {
        let v = u16::try_from(v).map_err(|_| Error::BadHeader("value does not fit in u16"))?;
        out.extend_from_slice(&v.to_le_bytes());
        Ok(())
    }

    fn align4(out: &mut Vec<u8>) {
        while !out.len().is_multiple_of(4) {
            out.push(0);
        }
    }

    /// Serializes a decoder into a q8 blob, then parses it back, so a blob this returns is
    /// one [`Model::parse`] accepts.
    pub fn write(
        latent_dim: usize,
        latent_scale: f32,
        layers: &[LayerSpec],
        table: &[u8; TABLE_LEN],
    ) -> Result<Vec<u8>, Error> {
        write_conditional(latent_dim, 0, latent_scale, layers, table)
    }

    /// [`write`] for a conditional decoder: the last `classes` of its `latent_dim` inputs are a
    /// one-hot digit ([`Model::classes`]; 0 writes the same blob as [`write`]).
    pub fn write_conditional(
        latent_dim: usize,
        classes: usize,
        latent_scale: f32,
        layers: &[LayerSpec],
        table: &[u8; TABLE_LEN],
    ) -> Result<Vec<u8>, Error> {
        let last = layers.last().ok_or(Error::BadHeader("layer count"))?;
        let mut head = Vec::with_capacity(HEADER_LEN);
        head.extend_from_slice(&MAGIC);
        let version = if classes > 0 { VERSION } else { FIRST_VERSION };
        head.extend_from_slice(&version.to_le_bytes());
        put_u16(&mut head, layers.len())?;
        put_u16(&mut head, latent_dim)?;
        put_u16(&mut head, last.output.c as usize)?;
        put_u16(&mut head, last.output.h as usize)?;
        put_u16(&mut head, last.output.w as usize)?;
        head.extend_from_slice(&latent_scale.to_bits().to_le_bytes());

        // Data sections follow the layer table; offsets are known once laid out.
        let mut data = Vec::new();
        let base = HEADER_LEN + LAYER_RECORD_LEN * layers.len();
        let mut records = Vec::with_capacity(LAYER_RECORD_LEN * layers.len());
        for (i, l) in layers.iter().enumerate() {
            let c_out = l.output.c as usize;
            if l.bias.len() != c_out || l.multiplier.len() != c_out || l.shift.len() != c_out {
                return Err(Error::BadLayer {
                    index: i as u16,
                    reason: "parameter count differs from output channels",
                });
            }
            let expected = match l.kind {
                LayerKind::Dense => l.input.len().checked_mul(c_out),
                LayerKind::Conv { kernel: k, .. } => {
                    (l.input.c as usize * c_out).checked_mul(k as usize * k as usize)
                }
            };
            if expected != Some(l.weights.len()) {
                return Err(Error::BadLayer {
                    index: i as u16,
                    reason: "weight count differs from the layer's shape",
                });
            }
            let weights_at = base + data.len();
            data.extend(l.weights.iter().map(|&w| w as u8));
            align4(&mut data);
            let params_at = base + data.len();
            for o in 0..c_out {
                for v in [l.bias[o], l.multiplier[o], l.shift[o]] {
                    data.extend_from_slice(&v.to_le_bytes());
                }
            }
            let (kind, k, pad, up) = match l.kind {
                LayerKind::Dense => (KIND_DENSE, 0, 0, 1),
                LayerKind::Conv {
                    kernel,
                    padding,
                    upsample,
                } => (KIND_CONV, kernel, padding, upsample),
            };
            let folded_at = if kind == KIND_CONV {
                let c_in = l.input.c as usize;
                align4(&mut data);
                let at = base + data.len();
                crate::fold::append_folded((k, pad, up), c_in, c_out, &l.weights, &mut data);
                at
            } else {
                0
            };
            let flags = if l.relu { FLAG_RELU } else { 0 };
            records.extend_from_slice(&[
                kind,
                flags,
                k,
                pad,
                up,
                l.input_zero_point as u8,
                l.output_zero_point as u8,
                0,
            ]);
            for s in [l.input, l.output] {
                for v in [s.c, s.h, s.w] {
                    records.extend_from_slice(&v.to_le_bytes());
                }
            }
            records.extend_from_slice(&(weights_at as u32).to_le_bytes());
            records.extend_from_slice(&(params_at as u32).to_le_bytes());
            records.extend_from_slice(&(folded_at as u32).to_le_bytes());
        }
        let table_at = base + data.len();
        data.extend_from_slice(table);
        let total = base + data.len() + 4;
        head.extend_from_slice(&(table_at as u32).to_le_bytes());
        head.extend_from_slice(&(total as u32).to_le_bytes());
        put_u16(&mut head, classes)?;
        put_u16(&mut head, 0)?;

        let mut blob = head;
        blob.extend_from_slice(&records);
        blob.extend_from_slice(&data);
        let crc = crc32(&blob);
        blob.extend_from_slice(&crc.to_le_bytes());
        Model::parse(&blob)?;
        Ok(blob)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A 2 -> 4 dense layer, then a 1->1 channel 3x3 conv over the 2x2 map upsampled to 4x4.
    pub(crate) fn tiny_blob() -> Vec<u8> {
        let (layers, table) = tiny_model();
        write(2, 0.05, &layers, &table).expect("valid blob")
    }

    /// [`tiny_blob`]'s layers and output table.
    fn tiny_model() -> ([LayerSpec; 2], [u8; TABLE_LEN]) {
        let (m, s) = quantize_multiplier(0.01).expect("multiplier");
        let dense = LayerSpec {
            kind: LayerKind::Dense,
            relu: true,
            input: Shape { c: 2, h: 1, w: 1 },
            output: Shape { c: 4, h: 1, w: 1 },
            input_zero_point: 0,
            output_zero_point: -128,
            weights: vec![10, -20, 30, 40, -50, 60, 70, 80],
            bias: vec![100, -100, 0, 5],
            multiplier: vec![m; 4],
            shift: vec![s; 4],
        };
        let conv = LayerSpec {
            kind: LayerKind::Conv {
                kernel: 3,
                padding: 1,
                upsample: 2,
            },
            relu: false,
            input: Shape { c: 1, h: 2, w: 2 },
            output: Shape { c: 1, h: 4, w: 4 },
            input_zero_point: -128,
            output_zero_point: 3,
            weights: vec![1, 2, 3, 4, 5, 6, 7, 8, 9],
            bias: vec![-7],
            multiplier: vec![m],
            shift: vec![s],
        };
        let mut table = [0u8; TABLE_LEN];
        for (i, t) in table.iter_mut().enumerate() {
            *t = i as u8;
        }
        ([dense, conv], table)
    }

    #[test]
    fn the_writer_refuses_weights_that_do_not_fit_the_shape() {
        // One weight missing or one too many, in the dense layer and in the conv: a dense
        // layer's short weights had been written, the parser then reading the next section as
        // its weights.
        for (index, more) in [(0, false), (0, true), (1, false), (1, true)] {
            let (mut layers, table) = tiny_model();
            let weights = &mut layers[index].weights;
            if more {
                weights.push(1);
            } else {
                weights.pop();
            }
            assert_eq!(
                write(2, 0.05, &layers, &table).err(),
                Some(Error::BadLayer {
                    index: index as u16,
                    reason: "weight count differs from the layer's shape",
                }),
                "layer {index}, one more: {more}"
            );
        }
    }

    /// `blob` with its CRC recomputed: how a crafted blob passes the CRC check.
    pub(crate) fn resealed(mut blob: Vec<u8>) -> Vec<u8> {
        let n = blob.len();
        let crc = crc32(&blob[..n - 4]);
        blob[n - 4..].copy_from_slice(&crc.to_le_bytes());
        blob
    }

    #[test]
    fn crc_matches_the_zlib_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn round_trip() {
        let blob = tiny_blob();
        let m = Model::parse(&blob).expect("parses");
        assert_eq!(m.latent_dim(), 2);
        assert_eq!(m.layer_count(), 2);
        assert_eq!(m.output_shape(), Shape { c: 1, h: 4, w: 4 });
        // Dense 2 -> 4 holds 2 + 8 bytes at once (the conv stores its 2x2 input with a column of
        // padding on each side); the last conv only that 8-byte input.
        assert_eq!(m.working_bytes(), 10);
        assert_eq!(m.macs(), 8 + 16 * 9);
        let l = m.layer(1).expect("layer 1");
        assert_eq!(l.input_zero_point, -128);
        assert_eq!(l.weights()[8] as i8, 9);
        assert_eq!(l.params(0).map(|p| p.0), Some(-7));
        assert!(m.layer(2).is_none());
    }

    #[test]
    fn a_conditional_blob_knows_its_digits() {
        let plain = Model::parse(&tiny_blob()).expect("parses").classes();
        assert_eq!(plain, 0);
        let header = |version: u16, classes: u16, reserved: u16| {
            let mut blob = tiny_blob();
            blob[4..6].copy_from_slice(&version.to_le_bytes());
            blob[28..30].copy_from_slice(&classes.to_le_bytes());
            blob[30..32].copy_from_slice(&reserved.to_le_bytes());
            resealed(blob)
        };
        let with_classes = |classes: u16, reserved: u16| header(3, classes, reserved);
        // The tiny model takes 2 inputs: a 1-value style and a 1-class one-hot.
        let blob = with_classes(1, 0);
        let m = Model::parse(&blob).expect("parses");
        assert_eq!(m.classes(), 1);
        let mut z = [9.0f32; 2];
        m.digit_latent(&[0.25], 0, &mut z).expect("digit 0");
        assert_eq!(z, [0.25, 1.0]);
        assert_eq!(
            m.digit_latent(&[0.25], 1, &mut z),
            Err(Error::UnknownDigit {
                digit: 1,
                classes: 1
            })
        );
        assert_eq!(
            m.digit_latent(&[0.25, 0.5], 0, &mut z),
            Err(Error::LatentLength {
                expected: 1,
                got: 2
            })
        );
        assert_eq!(
            m.digit_latent(&[0.25], 0, &mut [0.0; 3]),
            Err(Error::LatentLength {
                expected: 2,
                got: 3
            }),
            "the output buffer's length"
        );
        let plain_blob = tiny_blob();
        let plain = Model::parse(&plain_blob).expect("parses");
        assert_eq!(
            plain.digit_latent(&[0.25, 0.5], 0, &mut z),
            Err(Error::UnknownDigit {
                digit: 0,
                classes: 0
            })
        );
        // No latent left beside the one-hot, the reserved half not zero, a version-2 blob with
        // classes (a version-2 parser would take the one-hot for latent values), a version-3
        // blob without.
        for blob in [
            with_classes(2, 0),
            with_classes(1, 1),
            header(2, 1, 0),
            header(3, 0, 0),
        ] {
            assert_eq!(Model::parse(&blob).err(), Some(Error::BadHeader("classes")));
        }
        assert_eq!(
            Model::parse(&header(4, 1, 0)).err(),
            Some(Error::UnsupportedVersion(4))
        );
    }

    #[test]
    fn every_truncation_and_every_bit_flip_is_an_error_not_a_panic() {
        let blob = tiny_blob();
        for n in 0..blob.len() {
            assert!(
                Model::parse(&blob[..n]).is_err(),
                "prefix of {n} bytes accepted"
            );
        }
        for i in 0..blob.len() {
            for bit in 0..8 {
                let mut b = blob.clone();
                b[i] ^= 1 << bit;
                assert!(
                    Model::parse(&b).is_err(),
                    "flip of byte {i} bit {bit} accepted"
                );
            }
        }
    }

    #[test]
    fn specific_errors() {
        let blob = tiny_blob();
        let mut b = blob.clone();
        b[0] = b'X';
        assert_eq!(Model::parse(&b).unwrap_err(), Error::BadMagic);
        let mut b = blob.clone();
        b[4] = 1;
        assert_eq!(Model::parse(&b).unwrap_err(), Error::UnsupportedVersion(1));
        let mut b = blob.clone();
        let n = b.len();
        b[n - 10] ^= 0xff;
        assert_eq!(Model::parse(&b).unwrap_err(), Error::BadCrc);
        assert_eq!(Model::parse(&blob[..40]).unwrap_err(), Error::Truncated);
        // A valid CRC over out-of-range requantization parameters (a crafted blob).
        let params = read_u32(&blob, HEADER_LEN + 24) as usize;
        for (at, value) in [(8, 40i32), (8, -40), (4, 5)] {
            let mut b = blob.clone();
            b[params + at..params + at + 4].copy_from_slice(&value.to_le_bytes());
            assert_eq!(
                Model::parse(&resealed(b)).unwrap_err(),
                Error::BadLayer {
                    index: 0,
                    reason: "requantization multiplier or shift out of range"
                },
                "field {at} = {value}"
            );
        }
        // Two convs whose shapes differ with the same size: the reader would see other rows.
        let (m, s) = quantize_multiplier(0.01).expect("multiplier");
        let conv = |input: Shape, output: Shape, relu: bool| LayerSpec {
            kind: LayerKind::Conv {
                kernel: 1,
                padding: 0,
                upsample: 1,
            },
            relu,
            input,
            output,
            input_zero_point: -128,
            output_zero_point: if relu { -128 } else { 0 },
            weights: vec![1; (input.c * output.c) as usize],
            bias: vec![0; output.c as usize],
            multiplier: vec![m; output.c as usize],
            shift: vec![s; output.c as usize],
        };
        let dense = LayerSpec {
            kind: LayerKind::Dense,
            relu: true,
            input: Shape { c: 2, h: 1, w: 1 },
            output: Shape { c: 16, h: 1, w: 1 },
            input_zero_point: 0,
            output_zero_point: -128,
            weights: vec![1; 32],
            bias: vec![0; 16],
            multiplier: vec![m; 16],
            shift: vec![s; 16],
        };
        let (a, b) = (Shape { c: 1, h: 4, w: 4 }, Shape { c: 1, h: 2, w: 8 });
        let layers = [dense, conv(a, a, true), conv(b, b, false)];
        assert_eq!(
            write(2, 0.05, &layers, &[0; TABLE_LEN]).unwrap_err(),
            Error::BadLayer {
                index: 2,
                reason: "input shape differs from the previous conv's output"
            }
        );
        // Crafted layer records (CRC resealed): the reserved byte, a dense layer's conv fields,
        // and a conv whose sizes would overflow a 32-bit `usize` (16384 x 16384 channels).
        let record = |layer: usize, at: usize, bytes: &[u8]| {
            let mut b = blob.clone();
            let start = HEADER_LEN + LAYER_RECORD_LEN * layer + at;
            b[start..start + bytes.len()].copy_from_slice(bytes);
            Model::parse(&resealed(b)).unwrap_err()
        };
        let bad = |index, reason| Error::BadLayer { index, reason };
        assert_eq!(record(1, 7, &[1]), bad(1, "reserved byte is not 0"));
        let dense = "dense kernel, padding, upsampling or folded offset not 0, 0, 1, 0";
        for (at, bytes) in [(2, &[3][..]), (3, &[1]), (4, &[2]), (28, &[4, 0, 0, 0])] {
            assert_eq!(record(0, at, bytes), bad(0, dense), "byte {at}");
        }
        let wide = 16384u16.to_le_bytes();
        let huge = [wide[0], wide[1], 2, 0, 2, 0, wide[0], wide[1], 4, 0, 4, 0];
        assert_eq!(
            record(1, 8, &huge),
            bad(1, "layer larger than 2^24 elements")
        );
        // Flash padding after the blob is fine.
        let mut padded = blob.clone();
        padded.extend_from_slice(&[0xff; 13]);
        assert!(Model::parse(&padded).is_ok());
    }

    #[test]
    fn rounding_is_half_away_from_zero_and_exact() {
        let below_half = 0.5f32.next_down();
        for (x, r) in [
            (below_half, 0),
            (-below_half, 0),
            (0.5, 1),
            (-0.5, -1),
            (2.5, 3),
            (-2.5, -3),
            (126.49999, 126),
            (1e10, 128),
            (-1e10, -128),
        ] {
            assert_eq!(round_half_away(x), r, "{x}");
        }
    }

    #[test]
    fn latent_quantization_rounds_clamps_and_rejects_nan() {
        let blob = tiny_blob();
        let m = Model::parse(&blob).expect("parses");
        let mut q = [0i8; 2];
        m.quantize_latent(&[0.074, -0.076], &mut q).expect("ok");
        assert_eq!(q, [1, -2]);
        m.quantize_latent(&[100.0, -100.0], &mut q).expect("ok");
        assert_eq!(q, [127, -127]);
        assert_eq!(
            m.quantize_latent(&[f32::NAN, 0.0], &mut q),
            Err(Error::NonFiniteLatent)
        );
        assert!(matches!(
            m.quantize_latent(&[0.0], &mut q),
            Err(Error::LatentLength { .. })
        ));
        // The wrong length is the one named, and a refused latent leaves `out` untouched.
        assert_eq!(
            m.quantize_latent(&[0.0, 0.0], &mut [0i8; 3]),
            Err(Error::LatentLength {
                expected: 2,
                got: 3
            })
        );
        q = [5, 6];
        assert_eq!(
            m.quantize_latent(&[1.0, f32::INFINITY], &mut q),
            Err(Error::NonFiniteLatent)
        );
        assert_eq!(q, [5, 6]);
    }

    #[test]
    fn a_latent_scale_that_would_ignore_the_latent_is_refused() {
        let blob = tiny_blob();
        for bad in [
            0.0,
            -0.5,
            1e-45,
            1e-9,
            2e6,
            f32::MAX,
            f32::INFINITY,
            f32::NAN,
        ] {
            let mut b = blob.clone();
            b[16..20].copy_from_slice(&bad.to_bits().to_le_bytes());
            let b = resealed(b);
            assert_eq!(
                Model::parse(&b).err(),
                Some(Error::BadHeader("latent scale")),
                "{bad}"
            );
        }
    }

    #[test]
    fn params_past_the_channels_are_none() {
        let blob = tiny_blob();
        let m = Model::parse(&blob).expect("parses");
        let l = m.layer(0).expect("layer 0");
        let c = l.output.c as usize;
        assert!(l.params(c - 1).is_some());
        assert_eq!(l.params(c), None);
        assert_eq!(l.params(usize::MAX), None);
        // `output` is a public field: a layer told it has more channels than its parameters
        // hold answers None, not a panic.
        let mut wider = l;
        wider.output.c = 1000;
        assert_eq!(wider.params(999), None);
        assert_eq!(wider.params(c - 1), l.params(c - 1));
    }

    #[test]
    fn multipliers_reproduce_the_factor() {
        for f in [1e-6, 0.003, 0.25, 0.5, 0.9999, 1.0, 3.7, 1000.0] {
            let (m, s) = quantize_multiplier(f).expect("in range");
            assert!((1 << 30..=i32::MAX).contains(&m), "{f}: {m}");
            let back = m as f64 * 2f64.powi(s) / 2f64.powi(31);
            assert!((back - f).abs() / f < 1e-9, "{f} -> {back}");
        }
        assert_eq!(quantize_multiplier(0.0), None);
        assert_eq!(quantize_multiplier(f64::NAN), None);
    }
}
