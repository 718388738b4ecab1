//! Generated digits on an SSD1306 OLED, from an STM32F411 "Black Pill".
//!
//! The int8 decoder built into flash (`build.rs`) turns latent vectors into 28x28 digits;
//! the firmware morphs from one random latent to the next in [`MORPH_STEPS`] frames (with a
//! conditional decoder, from one digit to the next, 0 to 9 in random styles) and draws
//! each frame with `firmware_core::render::draw_frame`, the same screen the QEMU firmware dumps
//! as PBM in CI. Pressing the KEY button (PA0) starts a morph to a new digit at once. The on-board
//! LED (PC13) is lit while a digit is decoded; the defmt log (RTT, shown by `probe-rs run`) gives
//! the cycles each decode took. Wiring and flashing: `README.md`.
#![no_std]
#![no_main]

use cortex_m::peripheral::DWT;
use cortex_m_rt::entry;
use defmt_rtt as _;
use firmware_core::{
    decoder::{self, IMAGE_PIXELS, Scratch},
    q8::{Aligned, MAX_LATENT, Model},
    render,
};
use panic_probe as _;
use ssd1306::{I2CDisplayInterface, Ssd1306, prelude::*};
use stm32f4xx_hal::{pac, prelude::*, rcc::Config};

/// The q8 decoder blob, in flash (see `build.rs`), 4-byte aligned for the DSP kernels.
static MODEL: &[u8] = &Aligned(*include_bytes!(concat!(env!("OUT_DIR"), "/model.q8"))).0;

/// Frames from one latent to the next.
const MORPH_STEPS: usize = 12;
/// Pause after each frame, in milliseconds.
const FRAME_PAUSE_MS: u32 = 40;
/// The button is looked at every this many milliseconds of the pause: a short tap is seen.
const BUTTON_POLL_MS: u32 = 5;
/// Core clock: the Black Pill's 25 MHz crystal, multiplied up to the F411's maximum.
const SYSCLK_MHZ: u32 = 100;

/// A small xorshift generator for latent vectors (no heap, no floats in the state).
struct Rng(u32);

impl Rng {
    fn next_unit(&mut self) -> f32 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.0 = x;
        (x >> 8) as f32 / (1u32 << 24) as f32
    }

    /// Approximately standard normal values (the VAE's prior): a sum of four uniforms, centred
    /// and scaled to unit variance.
    fn fill_normal(&mut self, z: &mut [f32]) {
        for v in z {
            let sum: f32 = (0..4).map(|_| self.next_unit()).sum();
            *v = (sum - 2.0) * 1.732_050_8;
        }
    }
}

/// The next latent to morph to: a sample of the prior; for a conditional model (one that takes
/// a digit, `trainer train conv-vae --conditional`) a random style asked for `digit`, which then
/// moves on, so the board counts through the digits 0, 1, ..., 9, 0, ...
fn next_target(model: &Model, rng: &mut Rng, digit: &mut u8, to: &mut [f32]) {
    let dim = model.latent_dim();
    rng.fill_normal(&mut to[..dim]);
    let classes = model.classes();
    if classes == 0 {
        return;
    }
    let styles = dim - classes;
    let mut style = [0f32; MAX_LATENT];
    style[..styles].copy_from_slice(&to[..styles]);
    if let Err(e) = model.digit_latent(&style[..styles], *digit, &mut to[..dim]) {
        defmt::panic!("digit: {}", e);
    }
    defmt::info!("next digit: {}", *digit);
    *digit = ((usize::from(*digit) + 1) % classes) as u8;
}

#[entry]
fn main() -> ! {
    let (Some(dp), Some(mut cp)) = (pac::Peripherals::take(), cortex_m::Peripherals::take()) else {
        defmt::panic!("peripherals already taken");
    };
    let mut rcc = dp
        .RCC
        .freeze(Config::hse(25.MHz()).sysclk(SYSCLK_MHZ.MHz()));
    cp.DCB.enable_trace();
    cp.DWT.enable_cycle_counter();

    let gpioa = dp.GPIOA.split(&mut rcc);
    let gpiob = dp.GPIOB.split(&mut rcc);
    let gpioc = dp.GPIOC.split(&mut rcc);
    let button = gpioa.pa0.into_pull_up_input();
    let mut led = gpioc.pc13.into_push_pull_output();
    led.set_high(); // off: the LED is wired to VCC
    let scl = gpiob.pb6.internal_pull_up(true);
    let sda = gpiob.pb7.internal_pull_up(true);
    let i2c = dp.I2C1.i2c((scl, sda), 400.kHz(), &mut rcc);
    let mut delay = cp.SYST.delay(&rcc.clocks);

    let interface = I2CDisplayInterface::new(i2c);
    let mut display = Ssd1306::new(interface, DisplaySize128x64, DisplayRotation::Rotate0)
        .into_buffered_graphics_mode();
    if let Err(e) = display.init() {
        defmt::panic!("SSD1306 init failed: {}", defmt::Debug2Format(&e));
    }

    let model = match Model::parse(MODEL) {
        Ok(model) => model,
        Err(e) => defmt::panic!("model in flash rejected: {}", e),
    };
    let dim = model.latent_dim();
    defmt::info!(
        "model: {} bytes, latent size {} ({} of them a one-hot digit), {} MACs per digit",
        MODEL.len(),
        dim,
        model.classes(),
        model.macs()
    );

    let mut scratch = Scratch::new();
    let mut pixels = [0u8; IMAGE_PIXELS];
    let (mut from, mut to, mut z) = ([0f32; MAX_LATENT], [0f32; MAX_LATENT], [0f32; MAX_LATENT]);
    let mut z_q = [0i8; MAX_LATENT];
    let mut rng = Rng(0x2545_f491);
    let mut digit = 0u8;
    next_target(&model, &mut rng, &mut digit, &mut to);
    let mut frame = 0usize;
    let mut was_pressed = false;
    loop {
        from[..dim].copy_from_slice(&to[..dim]);
        next_target(&model, &mut rng, &mut digit, &mut to);
        for step in 1..=MORPH_STEPS {
            let t = step as f32 / MORPH_STEPS as f32;
            for ((v, a), b) in z.iter_mut().zip(&from).zip(&to).take(dim) {
                *v = a + (b - a) * t;
            }
            if let Err(e) = model.quantize_latent(&z[..dim], &mut z_q[..dim]) {
                defmt::panic!("latent: {}", e);
            }
            led.set_low();
            let start = DWT::cycle_count();
            if let Err(e) = decoder::decode(&model, &z_q[..dim], &mut scratch, &mut pixels) {
                defmt::panic!("decode: {}", e);
            }
            let cycles = DWT::cycle_count().wrapping_sub(start);
            led.set_high();
            defmt::info!(
                "frame {}: decoded in {} cycles ({} us)",
                frame,
                cycles,
                cycles / SYSCLK_MHZ
            );
            let shown = render::draw_frame(&mut display, &pixels, frame, &z[..dim])
                .and_then(|()| display.flush());
            if let Err(e) = shown {
                defmt::warn!("display: {}", defmt::Debug2Format(&e));
            }
            frame = frame.wrapping_add(1);

            // The pause, watching the button: a press starts a morph from this digit to a new
            // one. With a conditional model, mid-morph, that is the digit this morph was heading
            // for (in a new style), so a press skips none of 0 to 9; at its last frame, the
            // next one.
            let mut new_press = false;
            for _ in 0..FRAME_PAUSE_MS / BUTTON_POLL_MS {
                let pressed = button.is_low();
                new_press |= pressed && !was_pressed;
                was_pressed = pressed;
                if new_press {
                    break;
                }
                delay.delay_ms(BUTTON_POLL_MS);
            }
            if new_press {
                defmt::info!("button: new digit");
                to[..dim].copy_from_slice(&z[..dim]);
                if let Some(classes) = core::num::NonZeroUsize::new(model.classes())
                    && step < MORPH_STEPS
                {
                    digit = ((usize::from(digit) + classes.get() - 1) % classes) as u8;
                }
                break;
            }
        }
    }
}
