/*
 * The firmware's conv VAE decoder (2 -> dense 128 -> 4x4x8 -> conv 8 -> up 2 + conv 8 -> up 2 +
 * conv 16 (no padding) -> up 2 + conv 1 -> sigmoid -> 28x28), run with Arm's CMSIS-NN int8
 * kernels on QEMU mps2-an386 (Cortex-M4F), and timed like `firmware/qemu`'s `--measure`: under
 * `-icount shift=0` QEMU executes one instruction per virtual nanosecond and SysTick counts the
 * 25 MHz processor clock, so one tick is 40 instructions.
 *
 * This is a benchmark of CMSIS-NN on our decoder's shapes, not a second decoder: the weights and
 * quantization constants are pseudo-random (the kernels' instruction counts do not depend on
 * them; `run.sh` builds two seeds to show it), and CMSIS-NN has no nearest upsampling, so the
 * upsampled input of each convolution is materialised first, as TensorFlow Lite Micro's
 * RESIZE_NEAREST_NEIGHBOR would (here by widening each input row once and copying it to the
 * second row of its pair). Built by `run.sh`; never part of CI.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "arm_nnfunctions.h"

#ifndef SEED
#define SEED 1u
#endif

#define CPU_HZ 25000000u
#define DECODES 8

/* ---- semihosting: text out and exit ---- */

static int semihost(int op, const void *arg)
{
    register int r0 __asm__("r0") = op;
    register const void *r1 __asm__("r1") = arg;
    __asm__ volatile("bkpt 0xab" : "+r"(r0) : "r"(r1) : "memory");
    return r0;
}

static void put(const char *s) { semihost(0x04, s); } /* SYS_WRITE0 */

static void put_u(uint32_t v)
{
    char buf[12];
    int i = sizeof buf - 1;
    buf[i] = 0;
    do {
        buf[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    put(&buf[i]);
}

static void put_i(int32_t v)
{
    if (v < 0) {
        put("-");
        put_u((uint32_t)(-(int64_t)v));
    } else {
        put_u((uint32_t)v);
    }
}

/* " (M MACs, x.yy per MAC)" for `count` instructions spent on `macs` multiply-accumulates,
 * rounded to hundredths. */
static void put_per_mac(uint32_t count, uint32_t macs)
{
    uint32_t centi = (uint32_t)(((uint64_t)count * 100u + macs / 2) / macs);
    put(" (");
    put_u(macs);
    put(" MACs, ");
    put_u(centi / 100);
    put(".");
    put_u(centi / 10 % 10);
    put_u(centi % 10);
    put(" per MAC)");
}

static void __attribute__((noreturn)) exit_with(int status)
{
    /* SYS_EXIT with ADP_Stopped_ApplicationExit and the status (AArch32 takes one word: the
     * reason; QEMU maps ApplicationExit to status 0 and anything else to 1). */
    semihost(0x18, (const void *)(uintptr_t)(status == 0 ? 0x20026 : 0x20024));
    for (;;) {
    }
}

/* ---- SysTick: a free-running 64-bit tick count ---- */

#define SYST_CSR (*(volatile uint32_t *)0xE000E010u)
#define SYST_RVR (*(volatile uint32_t *)0xE000E014u)
#define SYST_CVR (*(volatile uint32_t *)0xE000E018u)
#define RELOAD 0x00FFFFFFu

static volatile uint32_t wraps;

void systick_handler(void) { wraps = wraps + 1; }

static void counter_start(void)
{
    SYST_CSR = 0;
    SYST_RVR = RELOAD;
    SYST_CVR = 0;
    wraps = 0;
    SYST_CSR = 7; /* processor clock, interrupt, enable */
}

static uint64_t ticks(void)
{
    for (;;) {
        uint32_t before = wraps;
        uint32_t current = SYST_CVR;
        if (wraps == before) {
            return ((uint64_t)before << 24) + ((RELOAD + 1 - current) & RELOAD);
        }
    }
}

static uint32_t instructions(uint64_t t) { return (uint32_t)(t * 1000000000ull / CPU_HZ); }

/* ---- the model: shapes of firmware/golden/model.q8, values from an LCG ---- */

static uint32_t lcg = SEED * 2654435761u + 12345u;

static int8_t rand_i8(int32_t lo, int32_t hi)
{
    lcg = lcg * 1664525u + 1013904223u;
    return (int8_t)(lo + (int32_t)((lcg >> 8) % (uint32_t)(hi - lo + 1)));
}

struct conv {
    int32_t in_h, in_w, in_c, out_c, pad, upsample;
    int8_t *weights;
    int32_t *bias, *multiplier, *shift;
};

/* The four convolutions: input side before upsampling, channels, padding, upsampling. */
static int8_t w1[8 * 9 * 8], w2[8 * 9 * 8], w3[16 * 9 * 8], w4[1 * 9 * 16];
static int32_t b1[8], b2[8], b3[16], b4[1];
static int32_t m1[8], m2[8], m3[16], m4[1], s1[8], s2[8], s3[16], s4[1];
static struct conv convs[4] = {
    {4, 4, 8, 8, 1, 1, w1, b1, m1, s1},
    {4, 4, 8, 8, 1, 2, w2, b2, m2, s2},
    {8, 8, 8, 16, 0, 2, w3, b3, m3, s3},
    {14, 14, 16, 1, 1, 2, w4, b4, m4, s4},
};
static int8_t fc_w[128 * 2];
static int32_t fc_b[128];
static uint8_t sigmoid[256];

/* Working memory: the largest upsampled input (28x28x16) and the layer output next to it. */
static int8_t buf_a[28 * 28 * 16], buf_b[28 * 28 * 16];
static int8_t scratch[2048];

/* A wide layer for reference, outside the decoder: conv 3x3, 32 -> 32 channels on 16x16. */
#define WIDE 32
static int8_t wide_in[16 * 16 * WIDE], wide_out[16 * 16 * WIDE], wide_w[WIDE * 9 * WIDE];
static int32_t wide_b[WIDE], wide_m[WIDE], wide_s[WIDE];
static uint8_t digit[28 * 28];

static void init_model(void)
{
    for (size_t i = 0; i < sizeof fc_w; i++) fc_w[i] = rand_i8(-127, 127);
    for (size_t i = 0; i < 128; i++) fc_b[i] = rand_i8(-127, 127) * 16;
    for (int l = 0; l < 4; l++) {
        struct conv *c = &convs[l];
        int32_t n = c->out_c * 9 * c->in_c;
        for (int32_t i = 0; i < n; i++) c->weights[i] = rand_i8(-127, 127);
        for (int32_t i = 0; i < c->out_c; i++) {
            c->bias[i] = rand_i8(-127, 127) * 64;
            c->multiplier[i] = (int32_t)(0x40000000u + ((uint32_t)(uint8_t)rand_i8(-128, 127) << 20));
            c->shift[i] = -9 - (rand_i8(0, 2));
        }
    }
    for (size_t i = 0; i < sizeof wide_w; i++) wide_w[i] = rand_i8(-127, 127);
    for (size_t i = 0; i < sizeof wide_in; i++) wide_in[i] = rand_i8(-128, 127);
    for (int i = 0; i < WIDE; i++) {
        wide_b[i] = rand_i8(-127, 127) * 64;
        wide_m[i] = 0x40000000;
        wide_s[i] = -10;
    }
    /* A monotone table in place of the sigmoid (a lookup costs the same whatever it holds). */
    for (int i = 0; i < 256; i++) sigmoid[i] = (uint8_t)i;
}

/* Nearest 2x upsampling of an NHWC map: each input row is widened once into the first output
 * row of its pair and copied to the second. */
static void upsample2(const int8_t *in, int32_t h, int32_t w, int32_t c, int8_t *out)
{
    int32_t row = 2 * w * c;
    for (int32_t y = 0; y < h; y++) {
        int8_t *o = out + (2 * y) * row;
        const int8_t *p = in + y * w * c;
        for (int32_t x = 0; x < w; x++) {
            memcpy(o, p, (size_t)c);
            memcpy(o + c, p, (size_t)c);
            o += 2 * c;
            p += c;
        }
        memcpy(out + (2 * y + 1) * row, out + (2 * y) * row, (size_t)row);
    }
}

/* Ticks spent per stage over all decodes: dense, then per conv its upsampling and the conv,
 * then the sigmoid. */
enum { T_DENSE, T_UP1, T_CONV1, T_UP2, T_CONV2, T_UP3, T_CONV3, T_UP4, T_CONV4, T_SIGMOID, T_N };
static const char *const stage_names[T_N] = {
    "dense 2->128", "(no upsampling)", "conv 8->8 on 4x4", "upsample to 8x8",
    "conv 8->8 on 8x8", "upsample to 16x16", "conv 8->16 on 16x16 -> 14x14",
    "upsample to 28x28", "conv 16->1 on 28x28", "sigmoid table",
};
static const uint32_t stage_macs[T_N] = {
    2 * 128, 0, 16 * 8 * 72, 0, 64 * 8 * 72, 0, 196 * 16 * 72, 0, 784 * 144, 0,
};
static uint64_t stage_ticks[T_N];

static int decode(const int8_t latent[2])
{
    uint64_t t = ticks(), now;
#define LAP(stage)                                                                                 \
    do {                                                                                           \
        now = ticks();                                                                             \
        stage_ticks[stage] += now - t;                                                             \
        t = now;                                                                                   \
    } while (0)

    const cmsis_nn_context none = {NULL, 0};
    cmsis_nn_fc_params fc = {0, 0, -128, {-128, 127}};
    cmsis_nn_per_tensor_quant_params fq = {0x50000000, -6};
    cmsis_nn_dims fin = {1, 1, 1, 2}, ff = {2, 1, 1, 128}, fb = {1, 1, 1, 128}, fout = {1, 1, 1, 128};
    if (arm_fully_connected_s8(&none, &fc, &fq, &fin, latent, &ff, fc_w, &fb, fc_b, &fout, buf_b) !=
        ARM_CMSIS_NN_SUCCESS)
        return 1;
    LAP(T_DENSE);

    int8_t *x = buf_b, *y = buf_a;
    for (int l = 0; l < 4; l++) {
        const struct conv *c = &convs[l];
        int32_t h = c->in_h * c->upsample, w = c->in_w * c->upsample;
        if (c->upsample == 2) {
            upsample2(x, c->in_h, c->in_w, c->in_c, y);
            int8_t *swap = x;
            x = y;
            y = swap;
        }
        LAP(T_UP1 + 2 * l);
        int32_t oh = h + 2 * c->pad - 2, ow = w + 2 * c->pad - 2;
        cmsis_nn_conv_params p = {128, l == 3 ? 0 : -128, {1, 1}, {c->pad, c->pad}, {1, 1}, {-128, 127}};
        cmsis_nn_per_channel_quant_params q = {c->multiplier, c->shift};
        cmsis_nn_dims in = {1, h, w, c->in_c}, f = {c->out_c, 3, 3, c->in_c};
        cmsis_nn_dims b = {1, 1, 1, c->out_c}, out = {1, oh, ow, c->out_c};
        cmsis_nn_context ctx = {scratch, sizeof scratch};
        if (arm_convolve_wrapper_s8_get_buffer_size(&p, &in, &f, &out) > (int32_t)sizeof scratch)
            return 2;
        if (arm_convolve_wrapper_s8(&ctx, &p, &q, &in, x, &f, c->weights, &b, c->bias, &out, y) !=
            ARM_CMSIS_NN_SUCCESS)
            return 3;
        int8_t *swap = x;
        x = y;
        y = swap;
        LAP(T_CONV1 + 2 * l);
    }
    for (int i = 0; i < 28 * 28; i++) digit[i] = sigmoid[(uint8_t)x[i]];
    LAP(T_SIGMOID);
    return 0;
}

int main(void)
{
    init_model();
    counter_start();

    /* Calibration: 2 * 100,000 instructions (`subs`, `bne`), less an empty measurement. */
    uint64_t t0 = ticks(), t1 = ticks(), t2 = ticks();
    uint32_t loops = 100000;
    __asm__ volatile("1: subs %0, %0, #1\n bne 1b" : "+r"(loops) : : "cc");
    uint64_t t3 = ticks();
    put("calibration: 200000 instructions measured as ");
    put_u(instructions((t3 - t2) - (t1 - t0)));
    put("\n");

    uint64_t total = 0;
    uint32_t checksum = 0;
    for (int d = 0; d < DECODES; d++) {
        int8_t latent[2] = {(int8_t)(d * 29 - 100), (int8_t)(90 - d * 23)};
        uint64_t start = ticks();
        int status = decode(latent);
        total += ticks() - start;
        if (status != 0) {
            put("CMSIS-NN call failed at step ");
            put_i(status);
            put("\n");
            exit_with(1);
        }
        for (int i = 0; i < 28 * 28; i++) checksum = checksum * 31u + digit[i];
    }
    uint32_t macs = 0;
    for (int s = 0; s < T_N; s++) macs += stage_macs[s];
    put("seed ");
    put_u(SEED);
    put(", output checksum ");
    put_u(checksum);
    put("\ninstructions per decode: ");
    put_u(instructions(total) / DECODES);
    put(" (");
    put_u(macs);
    put(" MACs)\n");
    for (int s = 0; s < T_N; s++) {
        if (s == T_UP1) continue;
        put("  ");
        put(stage_names[s]);
        put(": ");
        put_u(instructions(stage_ticks[s]) / DECODES);
        if (stage_macs[s]) put_per_mac(instructions(stage_ticks[s]) / DECODES, stage_macs[s]);
        put("\n");
    }

    /* The wide reference layer, once. */
    cmsis_nn_conv_params p = {128, -128, {1, 1}, {1, 1}, {1, 1}, {-128, 127}};
    cmsis_nn_per_channel_quant_params q = {wide_m, wide_s};
    cmsis_nn_dims in = {1, 16, 16, WIDE}, f = {WIDE, 3, 3, WIDE}, b = {1, 1, 1, WIDE};
    cmsis_nn_dims out = {1, 16, 16, WIDE};
    cmsis_nn_context ctx = {scratch, sizeof scratch};
    if (arm_convolve_wrapper_s8_get_buffer_size(&p, &in, &f, &out) > (int32_t)sizeof scratch)
        exit_with(1);
    uint64_t start = ticks();
    if (arm_convolve_wrapper_s8(&ctx, &p, &q, &in, wide_in, &f, wide_w, &b, wide_b, &out,
                                wide_out) != ARM_CMSIS_NN_SUCCESS)
        exit_with(1);
    uint32_t wide = instructions(ticks() - start);
    put("for reference, conv 32->32 on 16x16 (not in the decoder): ");
    put_u(wide);
    put_per_mac(wide, 16 * 16 * WIDE * 9 * WIDE);
    put("\n");
    exit_with(0);
}

/* ---- reset and the vector table ---- */

extern uint32_t _data, _edata, _data_load, _bss, _ebss, _stack_top;

void reset(void)
{
    uint32_t *src = &_data_load;
    for (uint32_t *dst = &_data; dst < &_edata;) *dst++ = *src++;
    for (uint32_t *dst = &_bss; dst < &_ebss;) *dst++ = 0;
    /* The FPU on (CP10, CP11 full access), in case the compiler uses it. */
    *(volatile uint32_t *)0xE000ED88u |= 0xFu << 20;
    __asm__ volatile("dsb\n isb");
    exit_with(main());
}

static void hang(void)
{
    put("unexpected exception\n");
    exit_with(1);
}

__attribute__((section(".vectors"), used)) static void (*const vectors[16])(void) = {
    (void (*)(void))(&_stack_top), reset, hang, hang, hang, hang, hang, 0, 0, 0, 0, hang, hang, 0,
    hang, systick_handler,
};
