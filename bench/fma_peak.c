/* One core's peak of 8-wide f32 fused multiply-adds (AVX2 + FMA), for comparing a kernel's
 * multiply-adds per second with what the FMA units allow. Ten independent accumulators cover
 * the FMA latency on the x86-64 cores we use (4 cycles, two units).
 *
 *   gcc -O2 -mavx2 -mfma bench/fma_peak.c -o /tmp/fma_peak && /tmp/fma_peak
 */
#include <immintrin.h>
#include <stdio.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(void) {
    __m256 acc[10];
    for (int i = 0; i < 10; i++) acc[i] = _mm256_set1_ps(i * 0.001f);
    const __m256 x = _mm256_set1_ps(0.999f), y = _mm256_set1_ps(0.0001f);
    const long n = 200000000;
    double t0 = now();
    for (long k = 0; k < n; k++) {
#pragma GCC unroll 10
        for (int i = 0; i < 10; i++) acc[i] = _mm256_fmadd_ps(acc[i], x, y);
    }
    double t = now() - t0;
    float sum = 0;
    for (int i = 0; i < 10; i++) {
        float v[8];
        _mm256_storeu_ps(v, acc[i]);
        sum += v[0];
    }
    printf("%.1f G multiply-adds/s on one core (checksum %.3f)\n", n * 80 / t / 1e9, sum);
    return 0;
}
