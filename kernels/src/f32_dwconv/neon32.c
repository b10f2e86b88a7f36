// The depthwise microkernel for 32-bit ARM with NEON (Raspberry Pi 2 and later on a
// 32-bit OS). It is chw.rs and hwc.rs written in C: Rust's NEON intrinsics for 32-bit ARM
// are not stable, C's are. Built by runtime/build.rs with -mfpu=neon for arm targets
// only; the Rust side calls it only when the CPU has NEON (kernels::Cpu).
//
// vmlaq_f32 (multiply, then add, rounding twice) rather than vfmaq_f32: fused
// multiply-add needs VFPv4, which not every ARMv7 NEON core has (Cortex-A8, A9).

#include <arm_neon.h>
#include <stddef.h>

// ---- channels first (chw.rs) ----

// Must match `Job` in chw.rs (#[repr(C)]).
typedef struct {
    const float *input;
    size_t h;
    size_t w;
    size_t top;
    size_t left;
    float *planes;
    size_t plane_len;
    size_t hq;
    size_t wq;
    size_t ho;
    size_t wo;
    float *out;
    size_t room;
    const float *weights;
    float bias;
    float lo;
    float hi;
} perch_dw_job;

#define MAX_TAPS 25

// Output rows y .. y + R of one channel; see `rows` in chw.rs (columns from the
// last vector down, so a row's last vector may spill into cells written afterwards).
static inline __attribute__((always_inline)) void rows(const perch_dw_job *job,
                                                       const float32x4_t *w, size_t y,
                                                       float32x4_t bias, float32x4_t lo,
                                                       float32x4_t hi, const int KH,
                                                       const int KW, const int S,
                                                       const int R) {
    const size_t end = job->ho * job->wo + job->room;
    for (size_t x = (job->wo - 1) / 4 * 4;; x -= 4) {
        float32x4_t acc[2] = {bias, bias};
#pragma GCC unroll 2
        for (int a = 0; a < S; a++) {
            const int taps_a = (KH + S - 1 - a) / S;
#pragma GCC unroll 6
            for (int q = 0; q < taps_a + R - 1; q++) {
                const float *row = job->planes + (y + q) * job->wq + x;
#pragma GCC unroll 5
                for (int kx = 0; kx < KW; kx++) {
                    const size_t plane = (size_t)(a * S + kx % S) * job->plane_len;
                    const float32x4_t v = vld1q_f32(row + plane + kx / S);
#pragma GCC unroll 2
                    for (int j = 0; j < R; j++) {
                        if (q >= j && q - j < taps_a) {
                            acc[j] = vmlaq_f32(acc[j], w[(a + S * (q - j)) * KW + kx], v);
                        }
                    }
                }
            }
        }
#pragma GCC unroll 2
        for (int j = 0; j < R; j++) {
            // vmaxq/vminq return NaN when either lane is NaN.
            const float32x4_t r = vminq_f32(hi, vmaxq_f32(lo, acc[j]));
            const size_t at = (y + j) * job->wo + x;
            float *out = job->out + at;
            if (at + 4 <= end) {
                vst1q_f32(out, r);
            } else {
                float lanes[4];
                vst1q_f32(lanes, r);
                for (size_t i = 0; i < job->wo - x; i++) {
                    out[i] = lanes[i];
                }
            }
        }
        if (x == 0) {
            break;
        }
    }
}

static inline __attribute__((always_inline)) void plane(const perch_dw_job *job, const int KH,
                                                        const int KW, const int S) {
    float32x4_t w[MAX_TAPS];
    for (int t = 0; t < KH * KW; t++) {
        w[t] = vdupq_n_f32(job->weights[t]);
    }
    const float32x4_t bias = vdupq_n_f32(job->bias);
    const float32x4_t lo = vdupq_n_f32(job->lo);
    const float32x4_t hi = vdupq_n_f32(job->hi);
    size_t y = 0;
    for (; y + 2 <= job->ho; y += 2) {
        rows(job, w, y, bias, lo, hi, KH, KW, S, 2);
    }
    if (y < job->ho) {
        rows(job, w, y, bias, lo, hi, KH, KW, S, 1);
    }
}

void perch_f32_dwconv_3x3s1_neon32(const perch_dw_job *job) { plane(job, 3, 3, 1); }
void perch_f32_dwconv_3x3s2_neon32(const perch_dw_job *job) { plane(job, 3, 3, 2); }
void perch_f32_dwconv_5x5s1_neon32(const perch_dw_job *job) { plane(job, 5, 5, 1); }
void perch_f32_dwconv_5x5s2_neon32(const perch_dw_job *job) { plane(job, 5, 5, 2); }

// ---- channels last (hwc.rs) ----

// Must match `Job` in hwc.rs (#[repr(C)]).
typedef struct {
    const float *padded;
    size_t wp;
    size_t c;
    size_t ho;
    size_t wo;
    float *out;
    size_t room;
    const float *weights;
    const float *bias;
    size_t cp;
    float lo;
    float hi;
} perch_dw_hwc_job;

#define PIXELS 4

// Output pixels x .. x + P of row y, every channel; see `pixels` in hwc.rs (channel
// blocks from the last down, so a pixel's last block may spill into later pixels).
static inline __attribute__((always_inline)) void pixels(const perch_dw_hwc_job *job, size_t y,
                                                         size_t x, float32x4_t lo,
                                                         float32x4_t hi, const int KH,
                                                         const int KW, const int S,
                                                         const int P) {
    const size_t c = job->c;
    const size_t end = job->ho * job->wo * c + job->room;
    for (size_t c0 = (c - 1) / 4 * 4;; c0 -= 4) {
        float32x4_t w[MAX_TAPS];
#pragma GCC unroll 25
        for (int t = 0; t < KH * KW; t++) {
            w[t] = vld1q_f32(job->weights + t * job->cp + c0);
        }
        float32x4_t acc[PIXELS];
#pragma GCC unroll 4
        for (int j = 0; j < P; j++) {
            acc[j] = vld1q_f32(job->bias + c0);
        }
#pragma GCC unroll 5
        for (int ky = 0; ky < KH; ky++) {
            const float *row = job->padded + ((y * S + ky) * job->wp + x * S) * c + c0;
#pragma GCC unroll 5
            for (int kx = 0; kx < KW; kx++) {
#pragma GCC unroll 4
                for (int j = 0; j < P; j++) {
                    acc[j] = vmlaq_f32(acc[j], w[ky * KW + kx], vld1q_f32(row + (j * S + kx) * c));
                }
            }
        }
#pragma GCC unroll 4
        for (int j = 0; j < P; j++) {
            const float32x4_t r = vminq_f32(hi, vmaxq_f32(lo, acc[j]));
            const size_t at = (y * job->wo + x + j) * c + c0;
            if (at + 4 <= end) {
                vst1q_f32(job->out + at, r);
            } else {
                float lanes[4];
                vst1q_f32(lanes, r);
                for (size_t i = 0; i < c - c0; i++) {
                    job->out[at + i] = lanes[i];
                }
            }
        }
        if (c0 == 0) {
            break;
        }
    }
}

static inline __attribute__((always_inline)) void image(const perch_dw_hwc_job *job, const int KH,
                                                        const int KW, const int S) {
    const float32x4_t lo = vdupq_n_f32(job->lo);
    const float32x4_t hi = vdupq_n_f32(job->hi);
    for (size_t y = 0; y < job->ho; y++) {
        size_t x = 0;
        for (; x + PIXELS <= job->wo; x += PIXELS) {
            pixels(job, y, x, lo, hi, KH, KW, S, PIXELS);
        }
        for (; x < job->wo; x++) {
            pixels(job, y, x, lo, hi, KH, KW, S, 1);
        }
    }
}

void perch_f32_dwconv_hwc_3x3s1_neon32(const perch_dw_hwc_job *job) { image(job, 3, 3, 1); }
void perch_f32_dwconv_hwc_3x3s2_neon32(const perch_dw_hwc_job *job) { image(job, 3, 3, 2); }
void perch_f32_dwconv_hwc_5x5s1_neon32(const perch_dw_hwc_job *job) { image(job, 5, 5, 1); }
void perch_f32_dwconv_hwc_5x5s2_neon32(const perch_dw_hwc_job *job) { image(job, 5, 5, 2); }
