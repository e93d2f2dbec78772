/* Trilinear sampling of a channels-last float32 volume, for the CPU inference path.
 *
 * PyTorch's CPU grid_sample reads every channel of every corner from its own plane (channels
 * first) and its 3-D kernel is not vectorised; here the C channels of a corner voxel are
 * contiguous, and one set of corner indices and weights serves them all. Semantics are those of
 * torch.nn.functional.grid_sample(mode="bilinear", align_corners=True): a point at voxel
 * coordinate (z, y, x) blends its 8 corner voxels; "zeros" padding gives each corner outside the
 * volume the value 0, "border" clamps the coordinate into the volume first.
 *
 * Also the Jacobian determinant of a displacement field (the homotopy h at every step, fold
 * checks, metrics), same finite differences as dccnn_deploy/ops/jacobian.py.
 *
 * The caller (dccnn_deploy/ops/native.py, through ctypes, which releases the GIL) splits the
 * output points [start, stop) between threads. Built by setup.py as an optional extension; the
 * package falls back to PyTorch when it is absent.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define DCCNN_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define DCCNN_CLONES
#endif
#define DCCNN_INLINE static inline __attribute__((always_inline))

/* one axis: the two corner indices (clamped into the volume) and their weights (0 for a corner
 * outside it with zeros padding) */
DCCNN_INLINE void axis_corners(float coord, int size, int zeros, int64_t idx[2], float w[2]) {
    if (!zeros) {
        coord = coord < 0.0f ? 0.0f : (coord > (float)(size - 1) ? (float)(size - 1) : coord);
    } else {
        /* beyond one voxel outside, both corners are outside: keep the int conversion defined */
        coord = coord < -2.0f ? -2.0f : (coord > (float)size + 1.0f ? (float)size + 1.0f : coord);
    }
    float base = floorf(coord);
    float frac = coord - base;
    int64_t lo = (int64_t)base, hi = lo + 1;
    w[0] = 1.0f - frac;
    w[1] = frac;
    if (zeros) {
        if (lo < 0 || lo > size - 1) w[0] = 0.0f;
        if (hi < 0 || hi > size - 1) w[1] = 0.0f;
    }
    idx[0] = lo < 0 ? 0 : (lo > size - 1 ? size - 1 : lo);
    idx[1] = hi < 0 ? 0 : (hi > size - 1 ? size - 1 : hi);
}

/* the C channels at one point into acc[0..C) */
DCCNN_INLINE void sample_into(const float *src, int D, int H, int W, const int C, float z, float y, float x,
                              int zeros, float *acc) {
    for (int c = 0; c < C; ++c) acc[c] = 0.0f;
    if (!(z == z && y == y && x == x)) return; /* NaN coordinates sample nothing */
    int64_t zi[2], yi[2], xi[2];
    float wz[2], wy[2], wx[2];
    axis_corners(z, D, zeros, zi, wz);
    axis_corners(y, H, zeros, yi, wy);
    axis_corners(x, W, zeros, xi, wx);
    for (int a = 0; a < 2; ++a) {
        for (int b = 0; b < 2; ++b) {
            float wab = wz[a] * wy[b];
            const float *row = src + ((zi[a] * H + yi[b]) * (int64_t)W) * C;
            for (int e = 0; e < 2; ++e) {
                float w = wab * wx[e];
                const float *p = row + xi[e] * C;
                for (int c = 0; c < C; ++c) acc[c] += w * p[c];
            }
        }
    }
}

/* where sampled values go: value c of output point i at ptr[i * point_stride + c * channel_stride],
 * float32, or bfloat16 (rounded to nearest even) when bf16 is set: planar (1, n) or channels-last
 * into a wider buffer (point_stride = its channel count, the CNN-LSTM's convolution input) */
typedef struct {
    void *ptr;
    int64_t point_stride, channel_stride;
    int bf16;
} Output;

DCCNN_INLINE uint16_t to_bf16(float f) {
    uint32_t b;
    memcpy(&b, &f, sizeof b);
    b += 0x7FFFu + ((b >> 16) & 1u);
    return (uint16_t)(b >> 16);
}

DCCNN_INLINE float from_bf16(uint16_t v) {
    uint32_t b = (uint32_t)v << 16;
    float f;
    memcpy(&f, &b, sizeof f);
    return f;
}

/* output point i of o with its channel stride given separately: called with a literal 1 for a
 * channels-last output, the channel loop writes contiguous memory and vectorises */
DCCNN_INLINE void store_strided(const Output *o, const int64_t channel_stride, int64_t i, const int C,
                                const float *acc) {
    if (o->bf16) {
        uint16_t *p = (uint16_t *)o->ptr + i * o->point_stride;
        for (int c = 0; c < C; ++c) p[c * channel_stride] = to_bf16(acc[c]);
    } else {
        float *p = (float *)o->ptr + i * o->point_stride;
        for (int c = 0; c < C; ++c) p[c * channel_stride] = acc[c];
    }
}

DCCNN_INLINE void store(const Output *o, int64_t i, const int C, const float *acc) {
    store_strided(o, o->channel_stride, i, C, acc);
}

/* the C channels at one point, stored as output point i */
DCCNN_INLINE void sample_point(const float *src, int D, int H, int W, const int C, float z, float y,
                               float x, int zeros, const Output *out, int64_t i) {
    float acc[64];
    sample_into(src, D, H, W, C, z, y, x, zeros, acc);
    store(out, i, C, acc);
}

/* d weight / d coordinate of one axis's two corners with zeros padding: -1 and +1 for corners
 * inside the volume, 0 for those outside (their value is 0) */
DCCNN_INLINE void axis_slopes(float coord, int size, float slope[2]) {
    coord = coord < -2.0f ? -2.0f : (coord > (float)size + 1.0f ? (float)size + 1.0f : coord);
    int64_t lo = (int64_t)floorf(coord), hi = lo + 1;
    slope[0] = (lo >= 0 && lo <= size - 1) ? -1.0f : 0.0f;
    slope[1] = (hi >= 0 && hi <= size - 1) ? 1.0f : 0.0f;
}

/* the C channels at one point into acc[0..C) and their derivatives along z, y, x into
 * grad[3c + 0..2] (zeros padding: a corner outside the volume is 0; grid_sample's backward) */
DCCNN_INLINE void sample_grad_into(const float *src, int D, int H, int W, const int C, float z, float y, float x,
                                   float *acc, float *grad) {
    for (int c = 0; c < C; ++c) acc[c] = grad[3 * c] = grad[3 * c + 1] = grad[3 * c + 2] = 0.0f;
    if (!(z == z && y == y && x == x)) return;
    int64_t zi[2], yi[2], xi[2];
    float wz[2], wy[2], wx[2], dz[2], dy[2], dx[2];
    axis_corners(z, D, 1, zi, wz);
    axis_corners(y, H, 1, yi, wy);
    axis_corners(x, W, 1, xi, wx);
    axis_slopes(z, D, dz);
    axis_slopes(y, H, dy);
    axis_slopes(x, W, dx);
    for (int a = 0; a < 2; ++a) {
        for (int b = 0; b < 2; ++b) {
            const float *row = src + ((zi[a] * H + yi[b]) * (int64_t)W) * C;
            for (int e = 0; e < 2; ++e) {
                const float *p = row + xi[e] * C;
                float w = wz[a] * wy[b] * wx[e];
                float gz = dz[a] * wy[b] * wx[e], gy = wz[a] * dy[b] * wx[e], gx = wz[a] * wy[b] * dx[e];
                for (int c = 0; c < C; ++c) {
                    acc[c] += w * p[c];
                    grad[3 * c] += gz * p[c];
                    grad[3 * c + 1] += gy * p[c];
                    grad[3 * c + 2] += gx * p[c];
                }
            }
        }
    }
}

/* points [start, stop) of a grid of shape (od, oh, ow): mode 0 = voxel displacements on that
 * grid, planar (3, n) in array-axis order (z, y, x), the point being (k + dz, j + dy, i + dx);
 * mode 1 = grid_sample grid, (n, 3) normalised (x, y, z) in [-1, 1] of the source volume */
DCCNN_INLINE void sample_range(const float *src, int D, int H, int W, const int C, const float *where,
                               int mode, int oh, int ow, int64_t n, int zeros, const Output *out,
                               int64_t start, int64_t stop) {
    const float sz = 0.5f * (float)(D - 1), sy = 0.5f * (float)(H - 1), sx = 0.5f * (float)(W - 1);
    if (mode == 0) { /* walk the output grid with counters (no division per point) */
        int64_t plane = (int64_t)oh * ow;
        int64_t k = start / plane, j = (start / ow) % oh, l = start % ow;
        for (int64_t i = start; i < stop; ++i) {
            sample_point(src, D, H, W, C, (float)k + where[i], (float)j + where[n + i], (float)l + where[2 * n + i],
                         zeros, out, i);
            if (++l == ow) {
                l = 0;
                if (++j == oh) {
                    j = 0;
                    ++k;
                }
            }
        }
        return;
    }
    for (int64_t i = start; i < stop; ++i) {
        float x = (where[3 * i] + 1.0f) * sx, y = (where[3 * i + 1] + 1.0f) * sy, z = (where[3 * i + 2] + 1.0f) * sz;
        sample_point(src, D, H, W, C, z, y, x, zeros, out, i);
    }
}

/* Exported entry point: output point i, channel c at out[i * point_stride + c * channel_stride]
 * (planar: 1, n), float32 or bfloat16 (bf16 = 1). Returns 0, or -1 for a channel count it does
 * not serve (1..64). */
DCCNN_CLONES int dccnn_trilinear(const float *src, int D, int H, int W, int C, const float *where, int mode,
                                 int oh, int ow, int64_t n, int zeros, void *out, int64_t point_stride,
                                 int64_t channel_stride, int bf16, int64_t start, int64_t stop) {
    const Output o = {out, point_stride, channel_stride, bf16};
    switch (C) { /* constant channel counts: the channel loops unroll and vectorise */
    case 1: sample_range(src, D, H, W, 1, where, mode, oh, ow, n, zeros, &o, start, stop); return 0;
    case 3: sample_range(src, D, H, W, 3, where, mode, oh, ow, n, zeros, &o, start, stop); return 0;
    case 8: sample_range(src, D, H, W, 8, where, mode, oh, ow, n, zeros, &o, start, stop); return 0;
    case 12: sample_range(src, D, H, W, 12, where, mode, oh, ow, n, zeros, &o, start, stop); return 0;
    case 16: sample_range(src, D, H, W, 16, where, mode, oh, ow, n, zeros, &o, start, stop); return 0;
    default:
        if (C < 1 || C > 64) return -1;
        sample_range(src, D, H, W, C, where, mode, oh, ow, n, zeros, &o, start, stop);
        return 0;
    }
}

/* tanh as a rational function of x (odd polynomial of degree 13 over an even one of degree 6, the
 * argument clamped to +-7.9053 where tanh rounds to +-1 in float32): within ~2e-7 of tanhf and
 * without a library call, so the loops below vectorise */
DCCNN_INLINE float tanh_rational(float x) {
    const float limit = 7.90531110763549805f;
    x = x < -limit ? -limit : (x > limit ? limit : x);
    const float x2 = x * x;
    float p = -2.76076847742355e-16f;
    p = p * x2 + 2.00018790482477e-13f;
    p = p * x2 + -8.60467152213735e-11f;
    p = p * x2 + 5.12229709037114e-08f;
    p = p * x2 + 1.48572235717979e-05f;
    p = p * x2 + 6.37261928875436e-04f;
    p = p * x2 + 4.89352455891786e-03f;
    float q = 1.19825839466702e-06f;
    q = q * x2 + 1.18534705686654e-04f;
    q = q * x2 + 2.26843463243900e-03f;
    q = q * x2 + 4.89352518554385e-03f;
    return x * p / q;
}

DCCNN_INLINE float sigmoid_rational(float x) { return 0.5f + 0.5f * tanh_rational(0.5f * x); }

#define LSTM_BLOCK 64

/* One CNN-LSTM update and Euler step (dccnn_deploy/model/cnn_lstm.py, model/dccnn.py) for the
 * points [start, stop) of n: gates channels-last (n, gates_stride), its first 12 channels f, i, g,
 * o (3 each; float32, or bfloat16 when gates_bf16); memory c and displacement disp planar (3, n),
 * homotopy h (n). c' = sigmoid(f) c + sigmoid(i) tanh(g), u = sigmoid(o) tanh(c'),
 * disp' = disp + dt u / h into c_out and disp_out (planar); disp' also into pack when it is not
 * NULL (the next step's convolution input, channels-last: point i at pack[i * pack_stride + c]). */
DCCNN_CLONES int dccnn_lstm_euler(const void *gates, int64_t gates_stride, int gates_bf16, const float *c,
                                  const float *disp, const float *h, float dt, float *c_out, float *disp_out,
                                  void *pack, int64_t pack_stride, int pack_bf16, int64_t n, int64_t start,
                                  int64_t stop) {
    const Output packed = {pack, pack_stride, 1, pack_bf16};
    if (gates_bf16 && gates_stride % 2 != 0) return -1; /* bfloat16 gates are read in pairs */
    for (int64_t base = start; base < stop; base += LSTM_BLOCK) {
        const int m = (int)(stop - base < LSTM_BLOCK ? stop - base : LSTM_BLOCK);
        float g[12][LSTM_BLOCK];
        /* gate k of the block's points, one loop per gate with the dtype branch outside the loops;
         * bfloat16 gates are read as 32-bit pairs (an even stride), which vectorises (10.5 -> 6.5-7
         * ms at 80x96x96 on 2 cores, same values) */
        if (gates_bf16) {
            const int64_t pairs = gates_stride / 2;
            const uint32_t *gg = (const uint32_t *)gates + base * pairs;
            for (int k = 0; k < 6; ++k)
                for (int p = 0; p < m; ++p) {
                    const uint32_t w = gg[p * pairs + k], lo = w << 16, hi = w & 0xFFFF0000u;
                    memcpy(&g[2 * k][p], &lo, sizeof lo);
                    memcpy(&g[2 * k + 1][p], &hi, sizeof hi);
                }
        } else {
            const float *gg = (const float *)gates + base * gates_stride;
            for (int k = 0; k < 12; ++k)
                for (int p = 0; p < m; ++p) g[k][p] = gg[p * gates_stride + k];
        }
        for (int ch = 0; ch < 3; ++ch) {
            const float *cc = c + ch * n + base, *dd = disp + ch * n + base, *hh = h + base;
            float *co = c_out + ch * n + base, *dout = disp_out + ch * n + base;
            for (int p = 0; p < m; ++p) {
                const float cn = sigmoid_rational(g[ch][p]) * cc[p]
                               + sigmoid_rational(g[3 + ch][p]) * tanh_rational(g[6 + ch][p]);
                co[p] = cn;
                dout[p] = dd[p] + dt * (sigmoid_rational(g[9 + ch][p]) * tanh_rational(cn)) / hh[p];
            }
        }
        if (pack != NULL) {
            for (int p = 0; p < m; ++p) {
                const float v[3] = {disp_out[base + p], disp_out[n + base + p], disp_out[2 * n + base + p]};
                store(&packed, base + p, 3, v);
            }
        }
    }
    return 0;
}

/* det(I + grad u) of a voxel-unit displacement u, planar (3, D, H, W), for the z-planes
 * [z0, z1), written to out (D, H, W) (identity = 0: det(grad u), u a map's positions in any
 * units, dccnn_deploy/transform.py map_jacobian); with floor > 0, 1 / max(det, floor) instead (the homotopy's
 * argument, dccnn_deploy/model/homotopy.py). Derivatives as dccnn_deploy.ops.jacobian.axis_derivative:
 * central differences inside, one-sided on the first and last voxel of an axis, 0 along an axis
 * of one voxel. */
typedef struct {
    int64_t lo, hi; /* the neighbours a derivative reads */
    float scale;    /* 1 / their distance (0 along an axis of one voxel) */
} Neighbours;

DCCNN_INLINE Neighbours axis_neighbours(int64_t i, int64_t n) {
    Neighbours nb = {i > 0 ? i - 1 : 0, i < n - 1 ? i + 1 : n - 1, 0.0f};
    nb.scale = (nb.hi - nb.lo) == 2 ? 0.5f : ((nb.hi - nb.lo) == 1 ? 1.0f : 0.0f);
    return nb;
}

DCCNN_CLONES int dccnn_jacobian_det(const float *u, int D, int H, int W, float floor, int identity, float *out,
                                    int64_t z0, int64_t z1) {
    const float one = identity ? 1.0f : 0.0f; /* 0: det(grad u) of a map given as positions */
    const int64_t plane = (int64_t)H * W, n = (int64_t)D * plane;
    for (int64_t z = z0; z < z1; ++z) {
        const Neighbours zn = axis_neighbours(z, D);
        for (int64_t y = 0; y < H; ++y) {
            const Neighbours yn = axis_neighbours(y, H);
            for (int64_t x = 0; x < W; ++x) {
                const Neighbours xn = axis_neighbours(x, W);
                float a[3][3];
                for (int c = 0; c < 3; ++c) {
                    const float *f = u + c * n;
                    a[c][0] = (f[zn.hi * plane + y * W + x] - f[zn.lo * plane + y * W + x]) * zn.scale + (c == 0) * one;
                    a[c][1] = (f[z * plane + yn.hi * W + x] - f[z * plane + yn.lo * W + x]) * yn.scale + (c == 1) * one;
                    a[c][2] = (f[z * plane + y * W + xn.hi] - f[z * plane + y * W + xn.lo]) * xn.scale + (c == 2) * one;
                }
                const float det = a[0][0] * (a[1][1] * a[2][2] - a[1][2] * a[2][1])
                                - a[0][1] * (a[1][0] * a[2][2] - a[1][2] * a[2][0])
                                + a[0][2] * (a[1][0] * a[2][1] - a[1][1] * a[2][0]);
                out[z * plane + y * W + x] = floor > 0.0f ? 1.0f / (det < floor ? floor : det) : det;
            }
        }
    }
    return 0;
}

/* One axis of a separable smoothing with replicated borders (dccnn_deploy/ops/smoothing.py):
 * dst[p] = sum_k taps[k] src[p + (k - radius) e_axis], the index clamped into the volume, for the
 * volumes of shape (D, H, W) and the outer index range [start, stop): z-planes for axes 1 and 2,
 * y-rows for axis 0 (so each thread reads and writes its own contiguous part). */
#define MAX_SMOOTH_RADIUS 15 /* ops/native.py MAX_SMOOTH_RADIUS */

DCCNN_CLONES int dccnn_smooth_axis(const float *src, float *dst, int D, int H, int W, int axis, const float *taps,
                                   int radius, int64_t start, int64_t stop) {
    if (radius < 0 || radius > MAX_SMOOTH_RADIUS) return -1;
    const int64_t plane = (int64_t)H * W;
    const int taps_n = 2 * radius + 1;
    if (axis == 2) { /* along x: within one row */
        for (int64_t z = start; z < stop; ++z)
            for (int64_t y = 0; y < H; ++y) {
                const float *row = src + z * plane + y * W;
                float *o = dst + z * plane + y * W;
                for (int64_t x = 0; x < W; ++x) {
                    float acc = 0.0f;
                    for (int k = 0; k < taps_n; ++k) {
                        int64_t q = x + k - radius;
                        q = q < 0 ? 0 : (q > W - 1 ? W - 1 : q);
                        acc += taps[k] * row[q];
                    }
                    o[x] = acc;
                }
            }
        return 0;
    }
    /* along y (axis 1) or z (axis 0): whole rows at a time, which vectorises */
    const int64_t count = axis == 1 ? H : D, stride = axis == 1 ? W : plane;
    for (int64_t outer = start; outer < stop; ++outer) {
        /* axis 1: outer = z, rows y; axis 0: outer = y, rows z */
        for (int64_t i = 0; i < count; ++i) {
            const int64_t base = axis == 1 ? outer * plane : outer * W;
            float *o = dst + base + i * stride;
            for (int64_t x = 0; x < W; ++x) o[x] = 0.0f;
            for (int k = 0; k < taps_n; ++k) {
                int64_t q = i + k - radius;
                q = q < 0 ? 0 : (q > count - 1 ? count - 1 : q);
                const float *row = src + base + q * stride, t = taps[k];
                for (int64_t x = 0; x < W; ++x) o[x] += t * row[x];
            }
        }
    }
    return 0;
}

/* Voxel-displacement sampling (mode 0 of dccnn_trilinear, zeros padding) of C <= 16 channels
 * (ops/native.py MAX_SLOPE_CHANNELS)
 * with the derivatives of each value along the three array axes, for gradients with respect to the
 * displacement: out (C, n), grad (C, 3, n) planar, output points [start, stop). */
DCCNN_CLONES int dccnn_trilinear_grad(const float *src, int D, int H, int W, int C, const float *disp, int oh, int ow,
                                      int64_t n, float *out, float *grad, int64_t start, int64_t stop) {
    if (C < 1 || C > 16) return -1;
    const int64_t plane = (int64_t)oh * ow;
    int64_t k = start / plane, j = (start / ow) % oh, l = start % ow;
    for (int64_t i = start; i < stop; ++i) {
        float acc[16], g[48];
        sample_grad_into(src, D, H, W, C, (float)k + disp[i], (float)j + disp[n + i], (float)l + disp[2 * n + i], acc, g);
        for (int c = 0; c < C; ++c) {
            out[c * n + i] = acc[c];
            for (int m = 0; m < 3; ++m) grad[(3 * c + m) * n + i] = g[3 * c + m];
        }
        if (++l == ow) {
            l = 0;
            if (++j == oh) {
                j = 0;
                ++k;
            }
        }
    }
    return 0;
}

/* One Newton iteration of the numerical inverse (dccnn_deploy/ops/invert.py) for the voxels
 * [start, stop) of the grid (D, H, W): src holds, channels-last (n, 12), the forward field u
 * (channels 0-2) and its derivatives d u_r / d axis_c (3 + 3r + c); w (3, n) planar is the current
 * inverse displacement. At y + w (border padding) the residual r = w + u(y + w) and the step
 * solving (I + grad u) s = r (the fixed-point step r where det <= singular), capped at max_step
 * voxels, give w_next = w - s. Returns the sum of |r| over the range (the caller's stopping test). */
DCCNN_CLONES double dccnn_newton_inverse(const float *src, int D, int H, int W, const float *w, float *w_next,
                                         float singular, float max_step, int64_t start, int64_t stop) {
    const int64_t plane = (int64_t)H * W, n = (int64_t)D * plane;
    int64_t k = start / plane, j = (start / W) % H, l = start % W;
    double total = 0.0;
    for (int64_t i = start; i < stop; ++i) {
        float v[12];
        float w0 = w[i], w1 = w[n + i], w2 = w[2 * n + i];
        sample_into(src, D, H, W, 12, (float)k + w0, (float)j + w1, (float)l + w2, 0, v);
        float r0 = w0 + v[0], r1 = w1 + v[1], r2 = w2 + v[2];
        total += sqrtf(r0 * r0 + r1 * r1 + r2 * r2);
        float a = v[3] + 1.0f, b = v[4], c = v[5];
        float d = v[6], e = v[7] + 1.0f, f = v[8];
        float g = v[9], h = v[10], q = v[11] + 1.0f;
        float a00 = e * q - f * h, a01 = c * h - b * q, a02 = b * f - c * e;
        float a10 = f * g - d * q, a11 = a * q - c * g, a12 = c * d - a * f;
        float a20 = d * h - e * g, a21 = b * g - a * h, a22 = a * e - b * d;
        float det = a * a00 + b * a10 + c * a20;
        float s0 = r0, s1 = r1, s2 = r2;
        if (det > singular) {
            s0 = (a00 * r0 + a01 * r1 + a02 * r2) / det;
            s1 = (a10 * r0 + a11 * r1 + a12 * r2) / det;
            s2 = (a20 * r0 + a21 * r1 + a22 * r2) / det;
        }
        float length = sqrtf(s0 * s0 + s1 * s1 + s2 * s2) + 1e-12f;
        float scale = max_step / length < 1.0f ? max_step / length : 1.0f;
        w_next[i] = w0 - s0 * scale;
        w_next[n + i] = w1 - s1 * scale;
        w_next[2 * n + i] = w2 - s2 * scale;
        if (++l == W) {
            l = 0;
            if (++j == H) {
                j = 0;
                ++k;
            }
        }
    }
    return total;
}

/* The preimage step of dccnn_deploy.transform._preimage for the target voxels of the file-order
 * planes [k0, k1) of a target volume (K, J, I), i fastest. u (3, K, J, I) planar: the interpolated
 * inverse displacement at every target voxel (model voxels, channel c = model axis c); norm (3 x 4,
 * row-major): target voxel (i, j, k) -> normalised model-grid point p; fwd (D, H, W, 3)
 * channels-last: the forward field on the model grid (border padding); P (3 x 3, row-major): target
 * voxels per model voxel, P[m][c] for file axis m (i, j, k) and model axis c. With the residual
 * r = u + f(p + u) and the inverse map's Jacobian from central differences of u between target
 * voxels, the step s = r + (du/dw) r is capped at max_step and is 0 where p lies outside [-1, 1];
 * writes u - s to out, planes k_base .. k_base + k_count - 1 of it (planar (3, k_count, J, I)). */
DCCNN_CLONES int dccnn_preimage(const float *u, int K, int J, int I, const double *norm, const float *fwd, int D,
                                int H, int W, const double *P, float max_step, float *out, int64_t k_base,
                                int64_t k_count, int64_t k0, int64_t k1) {
    const int64_t plane = (int64_t)J * I, n = (int64_t)K * plane, n_out = k_count * plane;
    const float half[3] = {0.5f * (float)(D - 1), 0.5f * (float)(H - 1), 0.5f * (float)(W - 1)};
    float pf[9];
    for (int c = 0; c < 3; ++c)
        for (int m = 0; m < 3; ++m) pf[3 * c + m] = (float)P[3 * m + c]; /* pf[c][m] = P[m][c] */
    for (int64_t k = k0; k < k1; ++k) {
        const Neighbours kn = axis_neighbours(k, K);
        for (int64_t j = 0; j < J; ++j) {
            const Neighbours jn = axis_neighbours(j, J);
            double row[3];
            for (int c = 0; c < 3; ++c) row[c] = norm[4 * c + 1] * j + norm[4 * c + 2] * k + norm[4 * c + 3];
            const int64_t base = k * plane + j * I;
            const int64_t up_k = kn.hi * plane + j * I, down_k = kn.lo * plane + j * I;
            const int64_t up_j = k * plane + jn.hi * I, down_j = k * plane + jn.lo * I;
            float *o = out + (k - k_base) * plane + j * I;
            for (int64_t i = 0; i < I; ++i) {
                const int64_t at = base + i;
                const Neighbours in = axis_neighbours(i, I);
                float p[3], d[3], f[3], r[3];
                int outside = 0;
                for (int c = 0; c < 3; ++c) {
                    p[c] = (float)(row[c] + norm[4 * c] * i);
                    outside |= p[c] > 1.0f || p[c] < -1.0f;
                    d[c] = u[c * n + at];
                }
                sample_into(fwd, D, H, W, 3, (p[0] + 1.0f) * half[0] + d[0], (p[1] + 1.0f) * half[1] + d[1],
                            (p[2] + 1.0f) * half[2] + d[2], 0, f);
                for (int c = 0; c < 3; ++c) r[c] = d[c] + f[c];
                float s[3];
                for (int ch = 0; ch < 3; ++ch) {
                    const float *uc = u + ch * n;
                    float di = (uc[base + in.hi] - uc[base + in.lo]) * in.scale;
                    float dj = (uc[up_j + i] - uc[down_j + i]) * jn.scale;
                    float dk = (uc[up_k + i] - uc[down_k + i]) * kn.scale;
                    s[ch] = r[ch] + (di * pf[0] + dj * pf[1] + dk * pf[2]) * r[0]
                                  + (di * pf[3] + dj * pf[4] + dk * pf[5]) * r[1]
                                  + (di * pf[6] + dj * pf[7] + dk * pf[8]) * r[2];
                }
                float length = sqrtf(s[0] * s[0] + s[1] * s[1] + s[2] * s[2]) + 1e-12f;
                float cap = outside ? 0.0f : (max_step / length < 1.0f ? max_step / length : 1.0f);
                for (int c = 0; c < 3; ++c) o[c * n_out + i] = d[c] - s[c] * cap;
            }
        }
    }
    return 0;
}

/* an importable module too (setuptools builds a CPython extension); the function is used through ctypes */
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_trilinear", "Trilinear sampling kernel (ctypes).", -1, NULL};
PyMODINIT_FUNC PyInit__trilinear(void) { return PyModule_Create(&module); }

/* x2 trilinear upsampling as torch.nn.functional.interpolate(scale_factor=2, mode="trilinear",
 * align_corners=False) (dccnn_deploy/ops/resize.py): output coordinate o reads the source at
 * max(0, o / 2 - 0.25), i.e. corner (o - 1) / 2 with weight 0.25 (o odd) or 0.75 (o even) on the
 * next corner, which the last voxel clamps. One axis: */
DCCNN_INLINE void upsample_axis(int64_t o, int64_t n, int64_t *lo, int64_t *hi, float *w) {
    const int64_t l = o == 0 ? 0 : (o - 1) / 2;
    *w = o == 0 ? 0.0f : ((o & 1) ? 0.25f : 0.75f);
    *lo = l;
    *hi = l < n - 1 ? l + 1 : l;
}

DCCNN_INLINE float load_value(const void *src, int bf16, int64_t at) {
    return bf16 ? from_bf16(((const uint16_t *)src)[at]) : ((const float *)src)[at];
}

/* the 8 corners (voxel indices) and weights of output point (z, y, x) of the (2D, 2H, 2W) grid */
DCCNN_INLINE void upsample_corners(int64_t z, int64_t y, int64_t x, int D, int H, int W, int64_t corner[8],
                                   float weight[8]) {
    int64_t z0, z1, y0, y1, x0, x1;
    float wz, wy, wx;
    upsample_axis(z, D, &z0, &z1, &wz);
    upsample_axis(y, H, &y0, &y1, &wy);
    upsample_axis(x, W, &x0, &x1, &wx);
    const int64_t zs[2] = {z0, z1}, ys[2] = {y0, y1}, xs[2] = {x0, x1};
    const float fz[2] = {1.0f - wz, wz}, fy[2] = {1.0f - wy, wy}, fx[2] = {1.0f - wx, wx};
    for (int a = 0; a < 2; ++a)
        for (int b = 0; b < 2; ++b)
            for (int e = 0; e < 2; ++e) {
                corner[4 * a + 2 * b + e] = (zs[a] * H + ys[b]) * W + xs[e];
                weight[4 * a + 2 * b + e] = fz[a] * fy[b] * fx[e];
            }
}

/* output points [start, stop) of the (2D, 2H, 2W) grid, C channels: source value c of voxel p at
 * src[p * point_stride + c * channel_stride] (float32, or bfloat16 when src_bf16), times scale,
 * stored through out (same element type as the source); with skip != NULL, skip_channels values of
 * output point i copied from skip[i * skip_channels] (channels-last) after the C upsampled ones.
 * Called with literal strides (planar: 1, D H W; channels-last: C, 1), so the channel loops of a
 * channels-last volume read contiguous memory and vectorise. */
DCCNN_INLINE void upsample_range(const void *src, int src_bf16, const int64_t point_stride,
                                 const int64_t channel_stride, int D, int H, int W, const int C, float scale,
                                 const Output *out, const void *skip, int skip_channels, int64_t start, int64_t stop) {
    const int64_t oh = 2 * (int64_t)H, ow = 2 * (int64_t)W, oplane = oh * ow;
    const size_t element = out->bf16 ? sizeof(uint16_t) : sizeof(float);
    int64_t z = start / oplane, y = (start / ow) % oh, x = start % ow;
    float acc[64];
    for (int64_t i = start; i < stop; ++i) {
        int64_t corner[8];
        float weight[8];
        upsample_corners(z, y, x, D, H, W, corner, weight);
        for (int c = 0; c < C; ++c) acc[c] = 0.0f;
        for (int k = 0; k < 8; ++k) {
            const float w = weight[k] * scale;
            const int64_t at = corner[k] * point_stride;
            if (src_bf16) {
                const uint16_t *p = (const uint16_t *)src + at;
                for (int c = 0; c < C; ++c) acc[c] += w * from_bf16(p[c * channel_stride]);
            } else {
                const float *p = (const float *)src + at;
                for (int c = 0; c < C; ++c) acc[c] += w * p[c * channel_stride];
            }
        }
        if (channel_stride == 1 && out->channel_stride == 1) /* channels-last into channels-last: contiguous */
            store_strided(out, 1, i, C, acc);
        else
            store(out, i, C, acc);
        if (skip != NULL)
            memcpy((char *)out->ptr + (i * out->point_stride + C) * element,
                   (const char *)skip + i * skip_channels * element, skip_channels * element);
        if (++x == ow) {
            x = 0;
            if (++y == oh) {
                y = 0;
                ++z;
            }
        }
    }
}

/* Exported entry point (see upsample_range): planar (channels_last = 0) or channels-last source of C
 * channels; output point i, channel c at out[i * out_point_stride + c * out_channel_stride],
 * float32 or bfloat16 (src_bf16, both). Returns 0, or -1 for a channel count it does not serve
 * (1..64). */
DCCNN_CLONES int dccnn_upsample2x(const void *src, int src_bf16, int channels_last, int D, int H, int W, int C,
                                  float scale, void *out, int64_t out_point_stride, int64_t out_channel_stride,
                                  const void *skip, int skip_channels, int64_t start, int64_t stop) {
    const Output o = {out, out_point_stride, out_channel_stride, src_bf16};
    const int64_t n = (int64_t)D * H * W;
    if (C < 1 || C > 64) return -1;
    switch (channels_last ? C : -C) { /* literal channel counts and strides: the channel loops vectorise */
#define UP_CL(k) \
    case k: upsample_range(src, src_bf16, k, 1, D, H, W, k, scale, &o, skip, skip_channels, start, stop); return 0;
    UP_CL(8) UP_CL(16) UP_CL(32) UP_CL(64)
#undef UP_CL
    case -3: upsample_range(src, src_bf16, 1, n, D, H, W, 3, scale, &o, skip, skip_channels, start, stop); return 0;
    default:
        upsample_range(src, src_bf16, channels_last ? C : 1, channels_last ? 1 : n, D, H, W, C, scale, &o, skip,
                       skip_channels, start, stop);
        return 0;
    }
}

/* Mattes mutual information (dccnn_deploy/preprocess/mutual_information.py): cubic B-spline
 * Parzen windows over `bins` histogram bins. A value v in [0, 1] (clamped) sits at bin position
 * p = 2 + v (bins - 5); its four non-zero weights fall on bins floor(p) - 1 .. floor(p) + 2. */
DCCNN_INLINE int parzen_taps(float v, int bins, float w[4], float dw[4]) {
    const float scale = (float)(bins - 5);
    const int inside = v >= 0.0f && v <= 1.0f; /* the clamp's gradient, as torch.clamp's */
    v = v < 0.0f ? 0.0f : (v > 1.0f ? 1.0f : v);
    const float p = 2.0f + v * scale;
    const float first = floorf(p); /* at most bins - 3 (v = 1): the taps stay inside the histogram */
    const float t = p - first, s = 1.0f - t;
    w[0] = s * s * s / 6.0f;
    w[1] = 2.0f / 3.0f - t * t + 0.5f * t * t * t;
    w[2] = 2.0f / 3.0f - s * s + 0.5f * s * s * s;
    w[3] = t * t * t / 6.0f;
    if (dw) {
        const float g = inside ? scale : 0.0f;
        dw[0] = -0.5f * s * s * g;
        dw[1] = (-2.0f * t + 1.5f * t * t) * g;
        dw[2] = (2.0f * s - 1.5f * s * s) * g;
        dw[3] = 0.5f * t * t * g;
    }
    return (int)first - 1;
}

/* The joint histogram (bins x bins, row: fixed bin, column: moving bin, accumulated in double) of
 * K sets of n moving values (K, n) against one fixed set given by its taps: first bin (n) and four
 * weights (n, 4). joint is (K, bins, bins); sets [start, stop) are filled. */
DCCNN_CLONES int dccnn_parzen_joint(const float *moving, int64_t n, const int32_t *fixed_first,
                                    const float *fixed_w, int bins, double *joint, int64_t start, int64_t stop) {
    for (int64_t k = start; k < stop; ++k) {
        double *h = joint + k * bins * bins;
        memset(h, 0, sizeof(double) * bins * bins);
        const float *v = moving + k * n;
        for (int64_t i = 0; i < n; ++i) {
            float w[4];
            const int m = parzen_taps(v[i], bins, w, NULL);
            const float *wf = fixed_w + 4 * i;
            for (int a = 0; a < 4; ++a) {
                double *row = h + (int64_t)(fixed_first[i] + a) * bins + m;
                for (int b = 0; b < 4; ++b) row[b] += (double)(wf[a] * w[b]);
            }
        }
    }
    return 0;
}

/* The gradient of sum_ab G[k, a, b] joint[k, a, b] with respect to each moving value: for set k
 * and value i, sum over its taps of fixed_w[i, a] * d w_b / d v * G[k, fixed bin a, moving bin b].
 * G (K, bins, bins) float; grad (K, n); values [start, stop) of every set. */
DCCNN_CLONES int dccnn_parzen_grad(const float *moving, int64_t n, int K, const int32_t *fixed_first,
                                   const float *fixed_w, int bins, const float *G, float *grad, int64_t start,
                                   int64_t stop) {
    for (int k = 0; k < K; ++k) {
        const float *v = moving + (int64_t)k * n, *g = G + (int64_t)k * bins * bins;
        for (int64_t i = start; i < stop; ++i) {
            float w[4], dw[4];
            const int m = parzen_taps(v[i], bins, w, dw);
            const float *wf = fixed_w + 4 * i;
            float total = 0.0f;
            for (int a = 0; a < 4; ++a) {
                const float *row = g + (int64_t)(fixed_first[i] + a) * bins + m;
                total += wf[a] * (dw[0] * row[0] + dw[1] * row[1] + dw[2] * row[2] + dw[3] * row[3]);
            }
            grad[(int64_t)k * n + i] = total;
        }
    }
    return 0;
}
