//! Drawing a decoded digit and its caption, and a 128x64 monochrome framebuffer.
//!
//! The drawing functions ([`draw_digit`], [`draw_caption`]) work on any embedded-graphics
//! [`DrawTarget`] with [`BinaryColor`], so a board crate can hand them a real display driver.
//! [`Framebuffer`] is such a target kept in memory, in the page layout of SSD1306-class OLED
//! controllers: [`Framebuffer::as_bytes`] is exactly what such a display is sent, and
//! [`Framebuffer::pbm`] dumps the same picture as a PBM image (how the QEMU firmware shows it).
//!
//! [`render_frame`] lays out one screen: the digit at scale 2 on the left, its index and latent
//! vector on the right. Everything here is integer code plus `core`'s float formatting, which is
//! exact, so a frame is byte-identical on the host and on the microcontroller.

use core::convert::Infallible;
use core::fmt::Write as _;

use embedded_graphics::mono_font::MonoTextStyle;
use embedded_graphics::mono_font::ascii::FONT_6X10;
use embedded_graphics::pixelcolor::BinaryColor;
use embedded_graphics::prelude::*;
use embedded_graphics::primitives::Rectangle;
use embedded_graphics::text::{Baseline, Text};

use crate::decoder::{IMAGE_PIXELS, IMAGE_SIDE};

/// Width of [`Framebuffer`] in pixels.
pub const WIDTH: usize = 128;
/// Height of [`Framebuffer`] in pixels.
pub const HEIGHT: usize = 64;
/// Size of the raw SSD1306 buffer: `HEIGHT / 8` pages of `WIDTH` bytes.
pub const BUFFER_LEN: usize = WIDTH * HEIGHT / 8;

/// Header of the binary PBM (P4) image written by [`Framebuffer::pbm`].
const PBM_HEADER: &[u8] = b"P4\n128 64\n";
/// Length of the PBM image written by [`Framebuffer::pbm`]: header, then 64 rows of 16 bytes.
pub const PBM_LEN: usize = PBM_HEADER.len() + BUFFER_LEN;

/// Source pixels at or above this value are lit by [`render_frame`].
pub const DEFAULT_THRESHOLD: u8 = 128;
/// At most this many latent components are printed by [`render_frame`].
pub const MAX_CAPTION_COMPONENTS: usize = 4;

/// Where [`render_frame`] puts the digit (scale 2: 56x56, vertically centred).
const DIGIT_ORIGIN: Point = Point::new(0, 4);
/// Scale of the digit in [`render_frame`].
const DIGIT_SCALE: u32 = 2;
/// Where [`render_frame`] puts the caption: right of the digit, one 6x10 line per row.
const CAPTION_ORIGIN: Point = Point::new(60, 6);
/// Capacity of the caption text. Worst case: `#` + 20 digits + `\n`, then 4 lines of
/// `zN ` + a formatted f32 (at most 43 chars: sign, 39 digits, `.00`) + `\n`: 210 bytes.
const CAPTION_CAPACITY: usize = 256;

/// A 128x64 monochrome framebuffer in SSD1306 page layout.
///
/// The buffer is 8 pages of 128 bytes. Page `p` holds rows `8p..8p+8`; byte `p * 128 + x` is
/// the vertical strip of 8 pixels at column `x`, bit 0 being the top row of the page. A set bit
/// is a lit pixel ([`BinaryColor::On`]), which draws a white stroke on a black OLED.
///
/// It is an embedded-graphics [`DrawTarget`]; pixels outside 128x64 are ignored. Note that the
/// inherent [`Framebuffer::clear`] (to black) shadows [`DrawTarget::clear`] in method-call
/// syntax; call the latter as `DrawTarget::clear(&mut fb, color)`.
#[derive(Clone, PartialEq, Eq)]
pub struct Framebuffer {
    buf: [u8; BUFFER_LEN],
}

impl Framebuffer {
    /// A framebuffer with every pixel off.
    pub const fn new() -> Self {
        Self {
            buf: [0; BUFFER_LEN],
        }
    }

    /// Turns every pixel off.
    pub fn clear(&mut self) {
        self.buf = [0; BUFFER_LEN];
    }

    /// Whether the pixel at column `x`, row `y` is lit; `false` outside the 128x64 area.
    pub fn pixel(&self, x: u32, y: u32) -> bool {
        let (x, y) = (x as usize, y as usize);
        if x >= WIDTH || y >= HEIGHT {
            return false;
        }
        self.buf[(y / 8) * WIDTH + x] & (1 << (y % 8)) != 0
    }

    /// The raw SSD1306 buffer (page layout, see [`Framebuffer`]): what a real display is sent
    /// after setting horizontal addressing mode over the whole screen.
    pub fn as_bytes(&self) -> &[u8; BUFFER_LEN] {
        &self.buf
    }

    /// Writes the frame as a binary PBM image (`P4`, 128x64) into `out` and returns it.
    ///
    /// The header is `P4\n128 64\n`, then 64 rows of 16 bytes, most significant bit first. In
    /// PBM a 1 bit is black; a lit pixel (white stroke on the OLED) is written as 1, so the digit
    /// appears dark on a light background, like ink on paper.
    pub fn pbm<'o>(&self, out: &'o mut [u8; PBM_LEN]) -> &'o [u8] {
        let (header, rows) = out.split_at_mut(PBM_HEADER.len());
        header.copy_from_slice(PBM_HEADER);
        for (y, row) in rows.chunks_exact_mut(WIDTH / 8).enumerate() {
            for (bx, byte) in row.iter_mut().enumerate() {
                let mut bits = 0u8;
                for i in 0..8 {
                    let x = bx * 8 + i;
                    if self.buf[(y / 8) * WIDTH + x] & (1 << (y % 8)) != 0 {
                        bits |= 0x80 >> i;
                    }
                }
                *byte = bits;
            }
        }
        out
    }

    /// Sets or clears one pixel; the caller has checked the bounds.
    fn set(&mut self, x: usize, y: usize, on: bool) {
        let byte = &mut self.buf[(y / 8) * WIDTH + x];
        let mask = 1 << (y % 8);
        if on {
            *byte |= mask;
        } else {
            *byte &= !mask;
        }
    }
}

impl Default for Framebuffer {
    fn default() -> Self {
        Self::new()
    }
}

impl core::fmt::Debug for Framebuffer {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let lit = self.buf.iter().map(|b| b.count_ones()).sum::<u32>();
        f.debug_struct("Framebuffer")
            .field("size", &(WIDTH, HEIGHT))
            .field("lit_pixels", &lit)
            .finish()
    }
}

impl OriginDimensions for Framebuffer {
    fn size(&self) -> Size {
        Size::new(WIDTH as u32, HEIGHT as u32)
    }
}

impl DrawTarget for Framebuffer {
    type Color = BinaryColor;
    type Error = Infallible;

    fn draw_iter<I>(&mut self, pixels: I) -> Result<(), Self::Error>
    where
        I: IntoIterator<Item = Pixel<Self::Color>>,
    {
        for Pixel(p, color) in pixels {
            if let (Ok(x), Ok(y)) = (usize::try_from(p.x), usize::try_from(p.y))
                && x < WIDTH
                && y < HEIGHT
            {
                self.set(x, y, color.is_on());
            }
        }
        Ok(())
    }

    fn fill_solid(&mut self, area: &Rectangle, color: Self::Color) -> Result<(), Self::Error> {
        let Some((x0, y0, x1, y1)) = clip(area, WIDTH, HEIGHT) else {
            return Ok(());
        };
        for y in y0..y1 {
            let mask = 1u8 << (y % 8);
            let row = &mut self.buf[(y / 8) * WIDTH..][x0..x1];
            if color.is_on() {
                row.iter_mut().for_each(|b| *b |= mask);
            } else {
                row.iter_mut().for_each(|b| *b &= !mask);
            }
        }
        Ok(())
    }

    fn clear(&mut self, color: Self::Color) -> Result<(), Self::Error> {
        self.buf = [if color.is_on() { 0xff } else { 0 }; BUFFER_LEN];
        Ok(())
    }
}

/// Intersects `area` with `[0, width) x [0, height)` without overflow; returns the half-open
/// pixel ranges `(x0, y0, x1, y1)`, or `None` when nothing is left.
fn clip(area: &Rectangle, width: usize, height: usize) -> Option<(usize, usize, usize, usize)> {
    let span = |start: i32, len: u32, limit: usize| -> Option<(usize, usize)> {
        let lo = i64::from(start).max(0);
        let hi = (i64::from(start) + i64::from(len)).min(limit as i64);
        (lo < hi).then_some((lo as usize, hi as usize))
    };
    let (x0, x1) = span(area.top_left.x, area.size.width, width)?;
    let (y0, y1) = span(area.top_left.y, area.size.height, height)?;
    Some((x0, y0, x1, y1))
}

/// Draws a 28x28 grayscale digit with its top-left corner at `top_left`, each source pixel
/// becoming a `scale` x `scale` square.
///
/// Source pixels `>= threshold` are drawn [`BinaryColor::On`]; the others are not drawn at all
/// (the background is left as it was, so clear the target first). Each horizontal run of lit
/// source pixels is one `fill_solid` call, clipped beforehand to the target's bounding box, so
/// any `scale` and position are safe. `scale == 0` draws nothing.
///
/// # Shapes
/// - `pixels`: `[28 * 28]`, row-major, 0 = background, 255 = stroke.
/// - drawn area: `[28 * scale, 28 * scale]` at `top_left`.
pub fn draw_digit<D>(
    target: &mut D,
    pixels: &[u8; IMAGE_PIXELS],
    top_left: Point,
    scale: u32,
    threshold: u8,
) -> Result<(), D::Error>
where
    D: DrawTarget<Color = BinaryColor>,
{
    if scale == 0 {
        return Ok(());
    }
    let bounds = target.bounding_box();
    let scale = i64::from(scale);
    for (row, line) in pixels.chunks_exact(IMAGE_SIDE).enumerate() {
        let mut col = 0;
        while col < IMAGE_SIDE {
            if line[col] < threshold {
                col += 1;
                continue;
            }
            let start = col;
            while col < IMAGE_SIDE && line[col] >= threshold {
                col += 1;
            }
            // In i64 the corners cannot overflow: |top_left| < 2^31, 28 * scale < 2^37.
            let x0 = i64::from(top_left.x) + start as i64 * scale;
            let x1 = i64::from(top_left.x) + col as i64 * scale;
            let y0 = i64::from(top_left.y) + row as i64 * scale;
            let y1 = y0 + scale;
            if let Some(rect) = clip_to(&bounds, x0, y0, x1, y1) {
                target.fill_solid(&rect, BinaryColor::On)?;
            }
        }
    }
    Ok(())
}

/// 4x4 Bayer matrix: the order in which the 16 screen pixels of a 4x4 tile light up as the gray
/// level rises, spreading them evenly.
const BAYER4: [[u8; 4]; 4] = [[0, 8, 2, 10], [12, 4, 14, 6], [3, 11, 1, 9], [15, 7, 13, 5]];

/// Draws a 28x28 grayscale digit with ordered (4x4 Bayer) dithering: each source pixel covers
/// `scale x scale` screen pixels, of which a share proportional to its gray level is lit, so faint
/// strokes stay visible where a threshold would drop them. The pattern follows screen
/// coordinates, so neighbouring source pixels of equal gray tile seamlessly.
///
/// The screen pixel at `(x, y)` is lit when the gray level exceeds `16 * BAYER4[y % 4][x % 4] + 8`:
/// 0 lights nothing, 255 everything, 128 half. Pixels outside the target are skipped.
pub fn draw_digit_dithered<D>(
    target: &mut D,
    pixels: &[u8; IMAGE_PIXELS],
    top_left: Point,
    scale: u32,
) -> Result<(), D::Error>
where
    D: DrawTarget<Color = BinaryColor>,
{
    let scale = i64::from(scale);
    let side = IMAGE_SIDE as i64 * scale;
    let bounds = target.bounding_box();
    let Some(visible) = clip_to(
        &bounds,
        i64::from(top_left.x),
        i64::from(top_left.y),
        i64::from(top_left.x) + side,
        i64::from(top_left.y) + side,
    ) else {
        return Ok(());
    };
    let lit = visible.points().filter(|p| {
        // Inside `visible`, the offsets from `top_left` lie in [0, side).
        let sx = (i64::from(p.x) - i64::from(top_left.x)) / scale;
        let sy = (i64::from(p.y) - i64::from(top_left.y)) / scale;
        let gray = pixels[sy as usize * IMAGE_SIDE + sx as usize];
        let level = 16 * u16::from(BAYER4[(p.y & 3) as usize][(p.x & 3) as usize]) + 8;
        u16::from(gray) > level
    });
    target.draw_iter(lit.map(|p| Pixel(p, BinaryColor::On)))
}

/// The part of the half-open box `[x0, x1) x [y0, y1)` inside `bounds`, if any.
fn clip_to(bounds: &Rectangle, x0: i64, y0: i64, x1: i64, y1: i64) -> Option<Rectangle> {
    let bx0 = i64::from(bounds.top_left.x);
    let by0 = i64::from(bounds.top_left.y);
    let bx1 = bx0 + i64::from(bounds.size.width);
    let by1 = by0 + i64::from(bounds.size.height);
    let (x0, x1) = (x0.max(bx0), x1.min(bx1));
    let (y0, y1) = (y0.max(by0), y1.min(by1));
    if x0 >= x1 || y0 >= y1 {
        return None;
    }
    // Inside `bounds`, so every value fits the i32 / u32 it came from.
    let top_left = Point::new(i32::try_from(x0).ok()?, i32::try_from(y0).ok()?);
    let size = Size::new(u32::try_from(x1 - x0).ok()?, u32::try_from(y1 - y0).ok()?);
    Some(Rectangle::new(top_left, size))
}

/// Draws `text` in the 6x10 ASCII mono font with the top of its first line at `top_left`.
///
/// Lines are separated by `\n` (10 pixels apart); only the glyph strokes are drawn, lit
/// ([`BinaryColor::On`]). Characters outside ASCII are drawn as `?`. A caption wholly outside
/// the target, or one whose box would run past the largest `i32` coordinate, draws nothing.
pub fn draw_caption<D>(target: &mut D, text: &str, top_left: Point) -> Result<(), D::Error>
where
    D: DrawTarget<Color = BinaryColor>,
{
    // The caption's box, in i64: the font's layout steps by plain i32 additions, which would
    // overflow next to i32::MAX.
    let (mut rows, mut columns, mut line) = (1i64, 0i64, 0i64);
    for b in text.bytes() {
        if b == b'\n' {
            (rows, line) = (rows + 1, 0);
        } else if b & 0xc0 != 0x80 {
            // A character's first byte (not a UTF-8 continuation byte).
            line += 1;
            columns = columns.max(line);
        }
    }
    let size = FONT_6X10.character_size;
    let (x0, y0) = (i64::from(top_left.x), i64::from(top_left.y));
    let x1 = x0 + columns * i64::from(size.width);
    let y1 = y0 + rows * i64::from(size.height);
    let past_i32 = x1 > i64::from(i32::MAX) || y1 > i64::from(i32::MAX);
    if past_i32 || clip_to(&target.bounding_box(), x0, y0, x1, y1).is_none() {
        return Ok(());
    }
    let style = MonoTextStyle::new(&FONT_6X10, BinaryColor::On);
    Text::with_baseline(text, top_left, style, Baseline::Top).draw(target)?;
    Ok(())
}

/// Renders one screen into `fb`: clears it, draws the digit at scale 2 at (0, 4) (56x56,
/// dithered with [`draw_digit_dithered`]), and right of it a caption: `#<index>`, then one line per
/// latent component, `z<i> <value>` with two decimals, for at most
/// [`MAX_CAPTION_COMPONENTS`] components.
///
/// # Shapes
/// - `pixels`: `[28 * 28]`, row-major (as [`crate::decoder::decode`] writes it).
/// - `latent`: `[latent_dim]`; any length, only the first components are printed.
pub fn render_frame(
    fb: &mut Framebuffer,
    pixels: &[u8; IMAGE_PIXELS],
    index: usize,
    latent: &[f32],
) {
    let Ok(()) = draw_frame(fb, pixels, index, latent);
}

/// [`render_frame`] on any monochrome `DrawTarget` (a display driver's buffer, say): clears it and
/// draws the same screen, so a board shows exactly the frames the QEMU firmware writes.
pub fn draw_frame<D>(
    target: &mut D,
    pixels: &[u8; IMAGE_PIXELS],
    index: usize,
    latent: &[f32],
) -> Result<(), D::Error>
where
    D: DrawTarget<Color = BinaryColor>,
{
    target.clear(BinaryColor::Off)?;
    draw_digit_dithered(target, pixels, DIGIT_ORIGIN, DIGIT_SCALE)?;
    draw_caption(target, &caption(index, latent), CAPTION_ORIGIN)
}

/// The caption text of [`render_frame`].
fn caption(index: usize, latent: &[f32]) -> heapless::String<CAPTION_CAPACITY> {
    let mut text = heapless::String::new();
    // Cannot fail: CAPTION_CAPACITY covers the longest possible text (see its docs).
    let _ = write!(text, "#{index}");
    for (i, z) in latent.iter().take(MAX_CAPTION_COMPONENTS).enumerate() {
        let _ = write!(text, "\nz{i} {z:.2}");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use embedded_graphics::mock_display::MockDisplay;

    /// A digit image with the given `(row, col, value)` pixels set, all others 0.
    fn image(set: &[(usize, usize, u8)]) -> [u8; IMAGE_PIXELS] {
        let mut img = [0u8; IMAGE_PIXELS];
        for &(r, c, v) in set {
            img[r * IMAGE_SIDE + c] = v;
        }
        img
    }

    #[test]
    fn threshold_selects_pixels_at_or_above() {
        let img = image(&[
            (0, 0, 127),
            (0, 1, 128),
            (0, 2, 255),
            (1, 0, 200),
            (2, 3, 1),
        ]);
        let mut display = MockDisplay::new();
        draw_digit(&mut display, &img, Point::zero(), 1, 128).expect("mock draw");
        display.assert_pattern(&[
            " ##", //
            "#  ",
        ]);
    }

    #[test]
    fn threshold_zero_lights_everything() {
        let img = [0u8; IMAGE_PIXELS];
        let mut fb = Framebuffer::new();
        let Ok(()) = draw_digit(&mut fb, &img, Point::zero(), 1, 0);
        for y in 0..64 {
            for x in 0..128 {
                assert_eq!(fb.pixel(x, y), x < 28 && y < 28, "({x}, {y})");
            }
        }
    }

    #[test]
    fn scale_makes_squares_at_offset() {
        let img = image(&[(0, 0, 255), (1, 1, 255), (1, 2, 255)]);
        let mut display = MockDisplay::new();
        draw_digit(&mut display, &img, Point::new(1, 2), 2, 128).expect("mock draw");
        display.assert_pattern(&[
            "       ", //
            "       ", " ##    ", " ##    ", "   ####", "   ####",
        ]);
    }

    #[test]
    fn scale_zero_draws_nothing() {
        let img = [255u8; IMAGE_PIXELS];
        let mut display = MockDisplay::<BinaryColor>::new();
        draw_digit(&mut display, &img, Point::zero(), 0, 0).expect("mock draw");
        assert_eq!(display.affected_area(), Rectangle::zero());
    }

    #[test]
    fn digit_is_clipped_to_the_target() {
        // MockDisplay panics on out-of-bounds drawing unless allowed: it must not be needed.
        let img = [255u8; IMAGE_PIXELS];
        let mut display = MockDisplay::<BinaryColor>::new();
        draw_digit(&mut display, &img, Point::new(-30, 50), 3, 1).expect("mock draw");
        assert_eq!(
            display.affected_area(),
            Rectangle::new(Point::new(0, 50), Size::new(54, 14))
        );
        // Huge scale and far-away corners neither overflow nor panic.
        let mut fb = Framebuffer::new();
        let Ok(()) = draw_digit(&mut fb, &img, Point::new(i32::MIN, i32::MIN), u32::MAX, 1);
        assert!(fb.as_bytes().iter().all(|&b| b == 0xff));
        let Ok(()) = draw_digit(&mut fb, &img, Point::new(i32::MAX, 0), u32::MAX, 1);
    }

    #[test]
    fn page_layout_bit_positions() {
        let cases = [
            (0, 0, 0, 0),
            (0, 8, 128, 0),
            (127, 63, 1023, 7),
            (5, 13, 133, 5),
        ];
        for (x, y, byte, bit) in cases {
            let mut fb = Framebuffer::new();
            let Ok(()) = fb.draw_iter([Pixel(Point::new(x, y), BinaryColor::On)]);
            let mut expected = [0u8; BUFFER_LEN];
            expected[byte] = 1 << bit;
            assert_eq!(fb.as_bytes(), &expected, "pixel ({x}, {y})");
            assert!(fb.pixel(x as u32, y as u32));
        }
    }

    #[test]
    fn out_of_bounds_pixels_are_ignored() {
        let mut fb = Framebuffer::new();
        let outside = [(-1, 0), (0, -1), (128, 0), (0, 64), (i32::MAX, i32::MIN)];
        let Ok(()) = fb.draw_iter(
            outside
                .iter()
                .map(|&(x, y)| Pixel(Point::new(x, y), BinaryColor::On)),
        );
        let Ok(()) = fb.fill_solid(
            &Rectangle::new(Point::new(-10, 64), Size::new(1000, 5)),
            BinaryColor::On,
        );
        assert_eq!(fb, Framebuffer::new());
        assert!(!fb.pixel(128, 0) && !fb.pixel(0, 64));
        assert_eq!(fb.size(), Size::new(128, 64));
    }

    #[test]
    fn fill_solid_matches_draw_iter() {
        let area = Rectangle::new(Point::new(3, 5), Size::new(10, 13));
        let mut a = Framebuffer::new();
        let mut b = Framebuffer::new();
        let Ok(()) = a.fill_solid(&area, BinaryColor::On);
        let Ok(()) = b.draw_iter(area.points().map(|p| Pixel(p, BinaryColor::On)));
        assert_eq!(a, b);
        let inner = Rectangle::new(Point::new(4, 6), Size::new(2, 9));
        let Ok(()) = a.fill_solid(&inner, BinaryColor::Off);
        let Ok(()) = b.draw_iter(inner.points().map(|p| Pixel(p, BinaryColor::Off)));
        assert_eq!(a, b);
        DrawTarget::clear(&mut a, BinaryColor::On).expect("infallible");
        assert!(a.pixel(127, 63));
        a.clear();
        assert_eq!(a, Framebuffer::new());
    }

    #[test]
    fn pbm_header_and_pixel_round_trip() {
        let lit = [(0, 0), (7, 0), (8, 1), (127, 63), (64, 31), (1, 9)];
        let mut fb = Framebuffer::new();
        let Ok(()) = fb.draw_iter(
            lit.iter()
                .map(|&(x, y)| Pixel(Point::new(x, y), BinaryColor::On)),
        );
        let mut out = [0u8; PBM_LEN];
        let pbm = fb.pbm(&mut out);
        assert_eq!(pbm.len(), PBM_LEN);
        assert_eq!(&pbm[..10], b"P4\n128 64\n");
        let rows = &pbm[10..];
        // Decode the PBM back (MSB first, 1 = lit) and compare with the framebuffer.
        let mut decoded = Framebuffer::new();
        for y in 0..64 {
            for x in 0..128 {
                if rows[y * 16 + x / 8] & (0x80 >> (x % 8)) != 0 {
                    let Ok(()) =
                        decoded.draw_iter([Pixel(Point::new(x as i32, y as i32), BinaryColor::On)]);
                }
            }
        }
        assert_eq!(decoded, fb);
        assert_eq!(
            rows.iter().map(|b| b.count_ones()).sum::<u32>(),
            lit.len() as u32
        );
        assert_eq!(rows[0], 0b1000_0001);
        assert_eq!(rows[16 + 1], 0b1000_0000);
        assert_eq!(rows[63 * 16 + 15], 0b0000_0001);
    }

    #[test]
    fn caption_text() {
        assert_eq!(caption(7, &[-1.234, 0.5]).as_str(), "#7\nz0 -1.23\nz1 0.50");
        assert_eq!(
            caption(12, &[0.0, 1.0, 2.0, 3.0, 4.0]).as_str(),
            "#12\nz0 0.00\nz1 1.00\nz2 2.00\nz3 3.00"
        );
        assert_eq!(caption(3, &[]).as_str(), "#3");
        // The worst case fits: nothing is dropped.
        let worst = caption(usize::MAX, &[-f32::MAX; 4]);
        assert_eq!(worst.lines().count(), 5);
        assert!(worst.ends_with(".00"));
        assert_eq!(
            caption(0, &[f32::NAN, f32::INFINITY]).as_str(),
            "#0\nz0 NaN\nz1 inf"
        );
    }

    #[test]
    fn caption_draws_in_6x10_font() {
        let mut display = MockDisplay::<BinaryColor>::new();
        draw_caption(&mut display, "#1\nz0", Point::new(2, 3)).expect("mock draw");
        let area = display.affected_area();
        assert!(area.top_left.x >= 2 && area.top_left.y >= 3, "{area:?}");
        // Two characters wide (12 px), two lines tall (20 px): strokes stay inside.
        assert!(
            area.bottom_right()
                .is_some_and(|p| p.x < 2 + 12 && p.y < 3 + 20)
        );
        // Partly outside: the part inside is drawn.
        let mut display = MockDisplay::<BinaryColor>::new();
        display.set_allow_out_of_bounds_drawing(true);
        draw_caption(&mut display, "#1\nz0", Point::new(-6, -10)).expect("mock draw");
        assert!(display.affected_area().size.width > 0);
        // Wholly outside, or next to i32's limits (the font's layout would overflow there):
        // nothing drawn, no panic.
        for far in [
            Point::new(0, i32::MAX - 5),
            Point::new(i32::MAX - 3, 0),
            Point::new(i32::MIN, i32::MIN),
            Point::new(64, 0),
        ] {
            let mut display = MockDisplay::<BinaryColor>::new();
            draw_caption(&mut display, "#1\nz0", far).expect("mock draw");
            assert_eq!(display.affected_area().size, Size::zero(), "{far:?}");
        }
    }

    #[test]
    fn render_frame_layout() {
        let mut img = [0u8; IMAGE_PIXELS];
        img[0] = 255; // top-left source pixel -> (0..2, 4..6)
        img[IMAGE_PIXELS - 1] = 255; // bottom-right -> (54..56, 58..60)
        let mut fb = Framebuffer::new();
        let Ok(()) = DrawTarget::clear(&mut fb, BinaryColor::On);
        render_frame(&mut fb, &img, 3, &[0.25, -1.5]);
        for (x, y) in [(0, 4), (1, 5), (54, 58), (55, 59)] {
            assert!(fb.pixel(x, y), "({x}, {y})");
        }
        for (x, y) in [
            (0, 3),
            (2, 4),
            (0, 6),
            (53, 58),
            (56, 59),
            (55, 60),
            (10, 10),
        ] {
            assert!(!fb.pixel(x, y), "({x}, {y})");
        }
        // Left of the caption column, only the two digit squares are lit.
        let digit_pixels = (0..60)
            .flat_map(|x| (0..64).map(move |y| (x, y)))
            .filter(|&(x, y)| fb.pixel(x, y))
            .count();
        assert_eq!(digit_pixels, 8);
        // The caption is there, right of the digit.
        let caption_pixels = (60..128)
            .flat_map(|x| (0..64).map(move |y| (x, y)))
            .filter(|&(x, y)| fb.pixel(x, y))
            .count();
        assert!(caption_pixels > 30, "{caption_pixels}");

        // Deterministic: the same inputs give the same bytes.
        let mut again = Framebuffer::new();
        render_frame(&mut again, &img, 3, &[0.25, -1.5]);
        assert_eq!(again.as_bytes(), fb.as_bytes());
    }

    #[test]
    fn dithering_lights_a_share_proportional_to_gray() {
        for (gray, lit_per_tile) in [(0u8, 0usize), (128, 8), (255, 16), (40, 2)] {
            let img = [gray; IMAGE_PIXELS];
            let mut fb = Framebuffer::new();
            let Ok(()) = draw_digit_dithered(&mut fb, &img, Point::new(0, 0), 2);
            // The 56x56 digit holds 14x14 whole 4x4 tiles.
            let lit = (0..56u32)
                .flat_map(|y| (0..56u32).map(move |x| (x, y)))
                .filter(|&(x, y)| fb.pixel(x, y))
                .count();
            assert_eq!(lit, lit_per_tile * 14 * 14, "gray {gray}");
            assert!(
                !fb.pixel(56, 0) && !fb.pixel(0, 56),
                "gray {gray}: drew outside"
            );
        }
    }

    #[test]
    fn dithering_clips_at_the_target_edges() {
        let img = [255u8; IMAGE_PIXELS];
        let mut display = MockDisplay::<BinaryColor>::new();
        // Mostly off-screen in both directions; MockDisplay panics on out-of-bounds draws.
        let Ok(()) = draw_digit_dithered(&mut display, &img, Point::new(-50, 40), 2);
        assert_eq!(display.affected_area().size, Size::new(6, 24));
    }
}
