// cxr-edge CUDA kernels: GPU tiling, the fused shift-averaging postprocess and the overlay.
//
// The numpy oracles are the contract (cxr_edge/tile.py, postprocess.py, render.py); every
// kernel here reproduces them: same sorted offsets, zero padding, patch order, overlay formula.
//
// Order (tile.py): shift k = i*S + j with (dr, dc) = (off[i], off[j]); patch p = row*G + col;
// patch-batch row k*G*G + p.  N = image_size, P = patch_size, G = N / P, S = steps, K = S*S.
//
// Every launcher is extern "C", takes a params struct by pointer, raw device pointers and a
// cudaStream_t, validates its arguments before touching the GPU and returns a cxr_status code
// (0 = ok). After each launch cudaGetLastError is checked; the CUDA error of the calling thread
// stays readable through cxr_last_cuda_error()/cxr_last_cuda_error_string().
//
// Postprocess (separable, no atomics, deterministic). A shifted patch map is constant between
// breakpoints; along one axis the S offsets put exactly one breakpoint at each residue
// (coordinate - off) % P == 0, so each 1-D sum over offsets is a running sum of differences:
//   pass 1  shift logits (K, C): mean of the G*G patch logits of each shift; then the
//           baseline b (C,): mean of the K shift logits.
//   pass 2  column pass, block (row, i): T[c, i, row, x] = sum_j d[i*S+j, row, col_j(x), c]
//           with d = logit - b (b: the class's mean logit), a running sum over x that restarts
//           every kColumnSegment pixels -> C*S*G*N values, O(S / kColumnSegment + 1) work each.
//   pass 3  row pass: map[c, y, x] = (sum_i T[c, i, row_i(y), x] + b * covering shifts) / K,
//           thread per x (coalesced), running over a segment of y: S reads at the segment
//           start, then at most 2 reads per y.
// Work O(K*G*G*C + C*S*G*N + C*N*N); memory traffic: logits twice (passes 1, 2), T written
// and read once (C*S*G*N floats per map kind: 3.7 MB at S = 8, 14.7 MB at S = 64, C = 14) and
// the maps written once. Float32 throughout. Rounding does not depend on the logits' offset
// (running sums carry only their variation, centred on b) and grows over at most
// kColumnSegment + S (columns) and kRowSegment + S (rows) additions.

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <stdint.h>
#include <stddef.h>

// Only the extern "C" API is exported (the library is built with hidden visibility).
#define CXR_API __attribute__((visibility("default")))

#define CXR_MAX_STEPS 128
#define CXR_MAX_PATCH 256
#define CXR_MAX_OVERLAYS 64
#define CXR_MAX_CLASSES 4096
#define CXR_MAX_IMAGE_SIZE 8192
#define CXR_MAX_DISPLAY_SIDE 65536

enum cxr_status {
    CXR_OK = 0,
    CXR_ERR_NULL_POINTER = 1,
    CXR_ERR_BAD_GEOMETRY = 2,
    CXR_ERR_BAD_STEPS = 3,
    CXR_ERR_BAD_RANGE = 4,
    CXR_ERR_BAD_DTYPE = 5,
    CXR_ERR_BAD_CLASSES = 6,
    CXR_ERR_MISALIGNED = 7,
    CXR_ERR_BAD_OVERLAY = 8,
    CXR_ERR_CUDA = 9,
    CXR_ERR_SHARED_MEMORY = 10,
};

enum cxr_dtype { CXR_FLOAT32 = 0, CXR_FLOAT16 = 1 };

extern "C" {

typedef struct {
    int image_size;   // N, model frame side in pixels
    int patch_size;   // P, multiple of 4 and N % P == 0
    int steps;        // S in 1..min(P, 128)
    int shift_begin;  // k0: first shift written (global shift index)
    int shift_end;    // k1: one past the last; out holds (k1-k0)*G*G patches
    int out_dtype;    // CXR_FLOAT32 or CXR_FLOAT16
} cxr_tile_params;

typedef struct {
    int image_size;
    int patch_size;
    int steps;
    int num_classes;   // C
    int logits_dtype;  // CXR_FLOAT32 or CXR_FLOAT16
} cxr_postprocess_params;

typedef struct {
    const void* logits;    // (K*G*G, C) logits_dtype, tile order; required
    float* shift_logits;   // (K, C) image logit of every shifted copy; required
    float* image_logits;   // (C,) of the unshifted copy; optional (NULL)
    float* probabilities;  // (C,) sigmoid(image_logits); optional
    float* raw;            // (C, N, N) mean of patch logits; optional
    float* scaled;         // (C, N, N) mean of patch logit * sigmoid(shift logit); optional
    float* workspace;      // cxr_postprocess_workspace_bytes(); required when raw or scaled
} cxr_postprocess_buffers;

typedef struct {
    int image_size;    // N of the maps
    int height;        // display image h
    int width;         // display image w
    int crop_top;      // crop box in display pixels (the square the model saw)
    int crop_left;
    int crop_side;
    int num_overlays;  // overlays drawn, 1..CXR_MAX_OVERLAYS
    float alpha_max;
    int map_index[CXR_MAX_OVERLAYS];  // which (N, N) map of `maps` each overlay draws
    float vmax[CXR_MAX_OVERLAYS];     // full-colour value per overlay (ignored with vmax_device)
    unsigned char lut[256 * 3];       // render.DIVERGING_LUT, RGB
} cxr_overlay_params;

}  // extern "C"

namespace {

thread_local cudaError_t g_last_cuda_error = cudaSuccess;

struct Geometry {
    int n, p, g, s;
    int off[CXR_MAX_STEPS];  // sorted offsets in [-P/2, P/2)
    int res[CXR_MAX_PATCH];  // res[r]: index of the offset with off = r (mod P), -1 if none
};

// round-half-even of num/den for num >= 0, den > 0 (np.round / Python round semantics).
int round_half_even(long long num, long long den) {
    long long q = num / den, r = num % den;
    if (2 * r > den || (2 * r == den && (q & 1))) ++q;
    return (int)q;
}

int compute_offsets(int steps, int patch, int* out) {
    if (patch <= 0 || patch % 2) return CXR_ERR_BAD_GEOMETRY;
    if (steps < 1 || steps > patch || steps > CXR_MAX_STEPS) return CXR_ERR_BAD_STEPS;
    const int half = patch / 2;
    for (int k = 0; k < steps; ++k) {
        int o = round_half_even((long long)patch * k, steps);
        out[k] = ((o + half) % patch) - half;  // o >= 0, so % is the floor modulo
    }
    for (int a = 1; a < steps; ++a) {  // insertion sort: S <= 128
        int v = out[a], b = a - 1;
        while (b >= 0 && out[b] > v) { out[b + 1] = out[b]; --b; }
        out[b + 1] = v;
    }
    return CXR_OK;
}

int make_geometry(int image_size, int patch, int steps, Geometry* geo) {
    if (image_size <= 0 || image_size > CXR_MAX_IMAGE_SIZE || patch <= 0 || patch > CXR_MAX_PATCH || patch % 4 ||
        image_size % patch)
        return CXR_ERR_BAD_GEOMETRY;
    int status = compute_offsets(steps, patch, geo->off);
    if (status) return status;
    for (int r = 0; r < patch; ++r) geo->res[r] = -1;
    for (int k = 0; k < steps; ++k) geo->res[(geo->off[k] + patch) % patch] = k;  // distinct for S <= P
    geo->n = image_size;
    geo->p = patch;
    geo->g = image_size / patch;
    geo->s = steps;
    return CXR_OK;
}

int check_launch() {
    cudaError_t err = cudaGetLastError();
    g_last_cuda_error = err;
    return err == cudaSuccess ? CXR_OK : CXR_ERR_CUDA;
}

int record(cudaError_t err) {
    g_last_cuda_error = err;
    return err == cudaSuccess ? CXR_OK : CXR_ERR_CUDA;
}

// floor((q*P + r - off) / P) - q for r in [0, P), off in [-P/2, P/2): one of -1, 0, 1.
// Avoids an integer division per (pixel, shift) in the inner loops.
__device__ __forceinline__ int cell_step(int r, int off, int p) {
    int d = r - off;
    return d < 0 ? -1 : (d >= p ? 1 : 0);
}

__device__ __forceinline__ float load_logit(const float* src, size_t i) { return __ldg(src + i); }
__device__ __forceinline__ float load_logit(const __half* src, size_t i) { return __half2float(src[i]); }

__device__ __forceinline__ float sigmoidf_precise(float x) {
    // Stable for large |x|, like postprocess.sigmoid.
    float e = expf(-fabsf(x));
    return x >= 0.f ? 1.f / (1.f + e) : e / (1.f + e);
}

// ---------------------------------------------------------------------------------------------
// tile: grid (G*G patches, k1-k0 shifts), block (P/4, rows). Each thread writes 4 consecutive
// pixels of one patch row (16-byte float32 or 8-byte float16 stores).

template <typename Out>
struct Quad;
template <>
struct Quad<float> {
    static __device__ __forceinline__ void store(float* dst, float a, float b, float c, float d) {
        *reinterpret_cast<float4*>(dst) = make_float4(a, b, c, d);
    }
};
template <>
struct Quad<__half> {
    static __device__ __forceinline__ void store(__half* dst, float a, float b, float c, float d) {
        __half2 lo = __floats2half2_rn(a, b), hi = __floats2half2_rn(c, d);
        uint2 packed;
        packed.x = *reinterpret_cast<unsigned int*>(&lo);
        packed.y = *reinterpret_cast<unsigned int*>(&hi);
        *reinterpret_cast<uint2*>(dst) = packed;
    }
};

template <typename Out>
__global__ void tile_kernel(const float* __restrict__ image, Out* __restrict__ out, Geometry geo, int k0) {
    const int n = geo.n, p = geo.p, g = geo.g;
    const int patch = blockIdx.x;
    const int k = k0 + blockIdx.y;
    const int row = patch / g, col = patch % g;
    const int dr = geo.off[k / geo.s], dc = geo.off[k % geo.s];
    const int px = threadIdx.x * 4;
    const int v0 = col * p + px + dc;
    Out* dst_patch = out + ((size_t)blockIdx.y * g * g + patch) * (size_t)p * p;
    for (int py = threadIdx.y; py < p; py += blockDim.y) {
        const int u = row * p + py + dr;
        float val[4];
        const bool row_in = u >= 0 && u < n;
#pragma unroll
        for (int t = 0; t < 4; ++t) {
            const int v = v0 + t;
            val[t] = (row_in && v >= 0 && v < n) ? __ldg(image + (size_t)u * n + v) : 0.f;
        }
        Quad<Out>::store(dst_patch + (size_t)py * p + px, val[0], val[1], val[2], val[3]);
    }
}

// ---------------------------------------------------------------------------------------------
// postprocess pass 1: shift logits (K, C) = mean of the G*G patch logits; block per shift,
// thread per class (coalesced across classes), fixed summation order.

template <typename In>
__global__ void shift_logits_kernel(const In* __restrict__ logits, int classes, int per_shift, int k_zero,
                                    float* __restrict__ shift_logits, float* __restrict__ image_logits,
                                    float* __restrict__ probabilities) {
    const int k = blockIdx.x;
    const In* src = logits + (size_t)k * per_shift * classes;
    for (int c = threadIdx.x; c < classes; c += blockDim.x) {
        float sum = 0.f;
        for (int q = 0; q < per_shift; ++q) sum += load_logit(src, (size_t)q * classes + c);
        const float mean = sum / (float)per_shift;
        shift_logits[(size_t)k * classes + c] = mean;
        if (k == k_zero) {
            if (image_logits) image_logits[c] = mean;
            if (probabilities) probabilities[c] = sigmoidf_precise(mean);
        }
    }
}

// postprocess pass 1b: baseline[c] = mean of the K shift logits of class c (a sequential sum in
// a fixed order), the value the column and row passes centre the logits on.
__global__ void baseline_kernel(const float* __restrict__ shift_logits, int classes, int k_count,
                                float* __restrict__ baseline) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= classes) return;
    float sum = 0.f;
    for (int k = 0; k < k_count; ++k) sum = __fadd_rn(sum, shift_logits[(size_t)k * classes + c]);
    baseline[c] = __fdiv_rn(sum, (float)k_count);
}

// The column and row passes sum logits centred on the class's mean logit b = baseline[c]
// (d = L - b, one rounding, exact when L and b are within a factor of 2): every running sum
// then carries only the logits' variation, not their offset, and the offset comes back once at
// the end through counts of covering shifts. Without it, logits around -12 make every partial
// sum about S*12 large and its rounding error grows with the offset.
// Every float operation below is an explicit round-to-nearest intrinsic: no FMA contraction,
// so tests/kernel_emulation.py reproduces the passes bit for bit in numpy (the sigmoid aside).

constexpr int kColumnThreads = 256;
constexpr int kColumnSegment = 16;  // running sums restart every kColumnSegment pixels

// postprocess pass 2 (column pass): block (row, i), thread per (class, segment of
// kColumnSegment pixels of x). Shared memory: the centred patch logits of the S shifts (i, j)
// in this patch row (S, G, C) and the weights sigmoid(shift logit) (S, C):
// cxr_postprocess_shared_bytes() = S*C*(G+1)*4 bytes.
//   t_raw[c, i, row, x]    = sum_j d[(i*S+j), row, col_j(x), c]
//   t_scaled[c, i, row, x] = sum_j d[...] * w[i*S+j, c]
//   w_cover[c, i, x]       = sum_j w[i*S+j, c]          (written by the row == 0 blocks)
// over the j whose shifted map covers x (0 <= x - off[j] < N). Each segment starts with the
// full sum over j (ascending), then adds one difference per breakpoint pixel.
template <typename In>
__global__ void __launch_bounds__(kColumnThreads)
    column_pass_kernel(const In* __restrict__ logits, const float* __restrict__ shift_logits, int classes,
                       const float* __restrict__ baseline, Geometry geo, float* __restrict__ t_raw,
                       float* __restrict__ t_scaled, float* __restrict__ w_cover) {
    extern __shared__ float smem[];
    const int n = geo.n, p = geo.p, g = geo.g, s = geo.s;
    const int row = blockIdx.x, i = blockIdx.y;
    const int span = g * classes;               // one shift's patch row: (G, C) contiguous
    float* rows = smem;                         // (S, G, C) centred logits
    float* weights = rows + (size_t)s * span;   // (S, C)

    for (int idx = threadIdx.x; idx < s * span; idx += blockDim.x) {
        const int j = idx / span, rem = idx % span;
        const float v = load_logit(logits, ((size_t)(i * s + j) * g * g + (size_t)row * g) * classes + rem);
        rows[idx] = __fsub_rn(v, baseline[rem % classes]);
    }
    for (int idx = threadIdx.x; idx < s * classes; idx += blockDim.x)
        weights[idx] = sigmoidf_precise(shift_logits[(size_t)i * s * classes + idx]);
    __syncthreads();

    const int segments = (n + kColumnSegment - 1) / kColumnSegment;
    const bool write_cover = w_cover != nullptr && row == 0;
    for (int item = threadIdx.x; item < classes * segments; item += blockDim.x) {
        const int c = item / segments;
        const int x0 = (item % segments) * kColumnSegment, x1 = min(x0 + kColumnSegment, n);
        int q = x0 / p, r = x0 % p;
        float acc_raw = 0.f, acc_scaled = 0.f, acc_cover = 0.f;
        for (int j = 0; j < s; ++j) {  // the full sum at the segment start
            const int col = q + cell_step(r, geo.off[j], p);
            if (col < 0 || col >= g) continue;
            const float v = rows[(j * g + col) * classes + c];
            const float w = weights[j * classes + c];
            acc_raw = __fadd_rn(acc_raw, v);
            acc_scaled = __fadd_rn(acc_scaled, __fmul_rn(v, w));
            acc_cover = __fadd_rn(acc_cover, w);
        }
        const size_t out = (((size_t)c * s + i) * g + row) * n;
        const size_t cover = ((size_t)c * s + i) * n;
        for (int x = x0;;) {
            if (t_raw) t_raw[out + x] = acc_raw;
            if (t_scaled) t_scaled[out + x] = acc_scaled;
            if (write_cover) w_cover[cover + x] = acc_cover;
            if (++x >= x1) break;
            if (++r == p) {
                r = 0;
                ++q;
            }
            const int j = geo.res[r];  // the one shift whose patch column changes at x
            if (j < 0) continue;
            // x - off[j] = col * P exactly; col in 0..G (G: the shifted map has ended).
            const int col = q + (geo.off[j] < 0 ? 1 : 0);
            const float now = col < g ? rows[(j * g + col) * classes + c] : 0.f;
            const float before = col >= 1 ? rows[(j * g + col - 1) * classes + c] : 0.f;
            const float w = weights[j * classes + c];
            const float step = __fsub_rn(now, before);
            acc_raw = __fadd_rn(acc_raw, step);
            acc_scaled = __fadd_rn(acc_scaled, __fmul_rn(step, w));
            if (col == 0) acc_cover = __fadd_rn(acc_cover, w);  // shifted map j starts at x
            else if (col == g) acc_cover = __fsub_rn(acc_cover, w);  // ... or ends
        }
    }
}

// postprocess pass 3 (row pass): thread per (x, segment of kRowSegment rows, class).
//   raw[c, y, x]    = (sum_i t_raw[c, i, row_i(y), x] + b * cover_rows(y) * cover_cols(x)) / K
//   scaled[c, y, x] = (sum_i t_scaled[c, i, row_i(y), x] + b * sum_i w_cover[c, i, x]) / K
// over the i whose shifted map covers y; the full sums at the segment start, then the one change
// per breakpoint row. cover_*: how many of the S offsets keep the pixel inside the shifted map.
constexpr int kRowThreads = 128;
constexpr int kRowSegment = 64;

__global__ void row_pass_kernel(const float* __restrict__ t_raw, const float* __restrict__ t_scaled,
                                const float* __restrict__ w_cover, const float* __restrict__ baseline,
                                Geometry geo, float* __restrict__ raw,
                                float* __restrict__ scaled) {
    const int n = geo.n, p = geo.p, g = geo.g, s = geo.s;
    const int x = blockIdx.x * blockDim.x + threadIdx.x;
    const int c = blockIdx.z;
    const int y0 = blockIdx.y * kRowSegment;
    if (x >= n || y0 >= n) return;
    const int y1 = min(y0 + kRowSegment, n);
    const float count = (float)(s * s);
    const float b = baseline[c];
    const size_t t_class = (size_t)c * s * g * n;
    const float* tr = t_raw ? t_raw + t_class + x : nullptr;  // tr[(i*G + r) * N]
    const float* ts = t_scaled ? t_scaled + t_class + x : nullptr;
    const float* wc = ts ? w_cover + (size_t)c * s * n + x : nullptr;  // wc[i * N]

    int cover_cols = 0;
    for (int j = 0; j < s; ++j) cover_cols += (x - geo.off[j] >= 0 && x - geo.off[j] < n) ? 1 : 0;
    int yq = y0 / p, yr = y0 % p, cover_rows = 0;
    float acc_raw = 0.f, acc_scaled = 0.f, acc_cover = 0.f;
    for (int i = 0; i < s; ++i) {
        const int r = yq + cell_step(yr, geo.off[i], p);
        if (r < 0 || r >= g) continue;
        ++cover_rows;
        const size_t o = ((size_t)i * g + r) * n;
        if (tr) acc_raw = __fadd_rn(acc_raw, tr[o]);
        if (ts) {
            acc_scaled = __fadd_rn(acc_scaled, ts[o]);
            acc_cover = __fadd_rn(acc_cover, wc[(size_t)i * n]);
        }
    }
    for (int y = y0;;) {
        const size_t dst = ((size_t)c * n + y) * n + x;
        if (raw) raw[dst] = __fdiv_rn(__fadd_rn(acc_raw, __fmul_rn(b, (float)(cover_rows * cover_cols))), count);
        if (scaled) scaled[dst] = __fdiv_rn(__fadd_rn(acc_scaled, __fmul_rn(b, acc_cover)), count);
        if (++y >= y1) break;
        if (++yr == p) {
            yr = 0;
            ++yq;
        }
        const int i = geo.res[yr];  // the one shift whose patch row changes at y
        if (i < 0) continue;
        const int r = yq + (geo.off[i] < 0 ? 1 : 0);  // y - off[i] = r * P exactly; r in 0..G
        const size_t now = ((size_t)i * g + r) * n, before = now - n;
        if (tr) acc_raw = __fadd_rn(acc_raw, __fsub_rn(r < g ? tr[now] : 0.f, r >= 1 ? tr[before] : 0.f));
        if (ts) acc_scaled = __fadd_rn(acc_scaled, __fsub_rn(r < g ? ts[now] : 0.f, r >= 1 ? ts[before] : 0.f));
        if (r == 0) {  // shifted map i starts at y
            ++cover_rows;
            if (ts) acc_cover = __fadd_rn(acc_cover, wc[(size_t)i * n]);
        } else if (r == g) {  // ... or ends
            --cover_rows;
            if (ts) acc_cover = __fsub_rn(acc_cover, wc[(size_t)i * n]);
        }
    }
}
// ---------------------------------------------------------------------------------------------
// overlay: render.overlay bit for bit. Coordinates in float64 like numpy; the float32 blend uses
// round-to-nearest intrinsics so the compiler cannot contract it into FMAs (numpy does not).

__device__ __forceinline__ void axis_taps(int pixel, int start, int side, int size, int* i0, int* i1, float* w1) {
    double coord = __dadd_rn(__ddiv_rn(__dmul_rn(__dadd_rn((double)pixel, 0.5) - (double)start, (double)size),
                                       (double)side),
                             -0.5);
    coord = fmin(fmax(coord, 0.0), (double)(size - 1));
    const double f = floor(coord);
    *i0 = (int)f;
    *i1 = min(*i0 + 1, size - 1);
    *w1 = (float)(coord - f);
}

__global__ void overlay_kernel(const unsigned char* __restrict__ gray, const float* __restrict__ maps,
                               const float* __restrict__ vmax_device, unsigned char* __restrict__ out,
                               const __grid_constant__ cxr_overlay_params prm) {
    const int x = blockIdx.x * blockDim.x + threadIdx.x;
    const int y = blockIdx.y * blockDim.y + threadIdx.y;
    const int o = blockIdx.z;
    if (x >= prm.width || y >= prm.height) return;
    const size_t pix = (size_t)y * prm.width + x;
    unsigned char* dst = out + ((size_t)o * prm.height * prm.width + pix) * 3;
    const unsigned char base = gray[pix];
    const int map = prm.map_index[o];
    const float vmax = vmax_device ? vmax_device[map] : prm.vmax[o];
    const bool inside = y >= prm.crop_top && y < prm.crop_top + prm.crop_side && x >= prm.crop_left &&
                        x < prm.crop_left + prm.crop_side;
    if (!inside || !(vmax > 0.f) || !isfinite(vmax)) {
        dst[0] = dst[1] = dst[2] = base;
        return;
    }
    const int n = prm.image_size;
    int r0, r1, c0, c1;
    float wr, wc;
    axis_taps(y, prm.crop_top, prm.crop_side, n, &r0, &r1, &wr);
    axis_taps(x, prm.crop_left, prm.crop_side, n, &c0, &c1, &wc);
    const float* m = maps + (size_t)map * n * n;
    // numpy order: columns first, then rows.
    const float top = __fadd_rn(__fmul_rn(m[(size_t)r0 * n + c0], __fsub_rn(1.f, wc)), __fmul_rn(m[(size_t)r0 * n + c1], wc));
    const float bot = __fadd_rn(__fmul_rn(m[(size_t)r1 * n + c0], __fsub_rn(1.f, wc)), __fmul_rn(m[(size_t)r1 * n + c1], wc));
    const float sample = __fadd_rn(__fmul_rn(top, __fsub_rn(1.f, wr)), __fmul_rn(bot, wr));
    const float t = fminf(fmaxf(__fdiv_rn(sample, vmax), -1.f), 1.f);
    const int index = min(max((int)rintf(__fmul_rn(__fadd_rn(t, 1.f), 127.5f)), 0), 255);  // NaN-safe
    const float a = __fmul_rn(prm.alpha_max, fabsf(t));
    const float keep = __fmul_rn(__fsub_rn(1.f, a), (float)base);
#pragma unroll
    for (int ch = 0; ch < 3; ++ch) {
        const float blended = __fadd_rn(keep, __fmul_rn(a, (float)prm.lut[index * 3 + ch]));
        dst[ch] = (unsigned char)fminf(fmaxf(rintf(blended), 0.f), 255.f);
    }
}

size_t column_floats(const Geometry& geo, int classes) {
    return (size_t)classes * geo.s * geo.g * geo.n;  // one column-pass buffer (C, S, G, N)
}

size_t cover_floats(const Geometry& geo, int classes) {
    return (size_t)classes * geo.s * geo.n;  // w_cover (C, S, N)
}

size_t baseline_floats(int classes) {
    return ((size_t)classes + 63) / 64 * 64;  // keeps the buffers behind it 256-byte aligned
}

// Workspace: baseline (C, padded), then t_raw, then t_scaled and w_cover (each when wanted).
size_t workspace_floats(const Geometry& geo, int classes, bool raw, bool scaled) {
    if (!raw && !scaled) return 0;
    return baseline_floats(classes) + (raw ? column_floats(geo, classes) : 0) +
           (scaled ? column_floats(geo, classes) + cover_floats(geo, classes) : 0);
}

// Dynamic shared memory of the column pass: (S, G, C) centred logits + (S, C) weights.
size_t column_shared_bytes(const Geometry& geo, int classes) {
    return ((size_t)geo.s * geo.g * classes + (size_t)geo.s * classes) * sizeof(float);
}

int check_dtype(int dtype) { return (dtype == CXR_FLOAT32 || dtype == CXR_FLOAT16) ? CXR_OK : CXR_ERR_BAD_DTYPE; }

// The current device's opt-in shared memory per block (what cudaFuncSetAttribute may raise a
// kernel's dynamic shared memory to).
int shared_memory_optin(int* bytes) {
    int device = 0;
    int status = record(cudaGetDevice(&device));
    if (status) return status;
    return record(cudaDeviceGetAttribute(bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
}

template <typename T>
int ensure_dynamic_smem(T* kernel, size_t bytes) {
    int optin = 0;
    int status = shared_memory_optin(&optin);
    if (status) return status;
    if (bytes > (size_t)optin) return CXR_ERR_SHARED_MEMORY;  // before any launch
    if (bytes <= 48 * 1024) return CXR_OK;
    return record(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
}

template <typename In>
int launch_postprocess(const cxr_postprocess_params& prm, const cxr_postprocess_buffers& buf, const Geometry& geo,
                       cudaStream_t stream) {
    const In* logits = static_cast<const In*>(buf.logits);
    const int classes = prm.num_classes, k_count = geo.s * geo.s;
    const bool maps = buf.raw || buf.scaled;
    const size_t smem = column_shared_bytes(geo, classes);
    if (maps) {  // refuse before the first kernel runs, so nothing is half written
        int status = ensure_dynamic_smem(column_pass_kernel<In>, smem);
        if (status) return status;
    }
    int zero = 0;
    while (geo.off[zero] != 0) ++zero;  // offset 0 always exists (k = 0)
    const int k_zero = zero * geo.s + zero;

    const int threads1 = classes >= 128 ? 128 : ((classes + 31) / 32) * 32;
    shift_logits_kernel<In><<<k_count, threads1, 0, stream>>>(logits, classes, geo.g * geo.g, k_zero,
                                                              buf.shift_logits, buf.image_logits,
                                                              buf.probabilities);
    int status = check_launch();
    if (status || !maps) return status;

    float* baseline = buf.workspace;
    float* t_raw = buf.raw ? baseline + baseline_floats(classes) : nullptr;
    float* t_scaled = buf.scaled ? baseline + baseline_floats(classes) + (buf.raw ? column_floats(geo, classes) : 0)
                                 : nullptr;
    float* w_cover = buf.scaled ? t_scaled + column_floats(geo, classes) : nullptr;
    baseline_kernel<<<(classes + 127) / 128, 128, 0, stream>>>(buf.shift_logits, classes, k_count, baseline);
    status = check_launch();
    if (status) return status;
    column_pass_kernel<In><<<dim3(geo.g, geo.s), kColumnThreads, smem, stream>>>(
        logits, buf.shift_logits, classes, baseline, geo, t_raw, t_scaled, w_cover);
    status = check_launch();
    if (status) return status;

    const dim3 grid((geo.n + kRowThreads - 1) / kRowThreads, (geo.n + kRowSegment - 1) / kRowSegment, classes);
    row_pass_kernel<<<grid, kRowThreads, 0, stream>>>(t_raw, t_scaled, w_cover, baseline, geo, buf.raw, buf.scaled);
    return check_launch();
}

}  // namespace

extern "C" {

// ---- host-only helpers (usable without a GPU) ------------------------------------------------

CXR_API const char* cxr_status_string(int status) {
    switch (status) {
        case CXR_OK: return "ok";
        case CXR_ERR_NULL_POINTER: return "a required device pointer is NULL";
        case CXR_ERR_BAD_GEOMETRY: return "image_size must be a positive multiple of patch_size (a multiple of 4, at most 256)";
        case CXR_ERR_BAD_STEPS: return "steps must be in 1..min(patch_size, 128)";
        case CXR_ERR_BAD_RANGE: return "shift range must satisfy 0 <= begin < end <= steps*steps";
        case CXR_ERR_BAD_DTYPE: return "dtype must be 0 (float32) or 1 (float16)";
        case CXR_ERR_BAD_CLASSES: return "num_classes must be in 1..4096";
        case CXR_ERR_MISALIGNED: return "output pointer is not aligned for vector stores (16 B float32, 8 B float16)";
        case CXR_ERR_BAD_OVERLAY: return "bad overlay parameters (crop box, display size, overlay count or map index)";
        case CXR_ERR_CUDA: return "CUDA error (see cxr_last_cuda_error_string)";
        case CXR_ERR_SHARED_MEMORY:
            return "the column pass needs more shared memory per block than this device allows "
                   "(cudaDevAttrMaxSharedMemoryPerBlockOptin): fewer classes or steps fit";
        default: return "unknown status";
    }
}

CXR_API int cxr_last_cuda_error(void) { return (int)g_last_cuda_error; }

CXR_API const char* cxr_last_cuda_error_string(void) { return cudaGetErrorString(g_last_cuda_error); }

CXR_API int cxr_abi_version(void) { return 2; }

// sizeof the params structs (0 tile, 1 postprocess, 2 buffers, 3 overlay) so the ctypes
// mirrors can check their layout at load time.
CXR_API int cxr_struct_size(int which) {
    switch (which) {
        case 0: return (int)sizeof(cxr_tile_params);
        case 1: return (int)sizeof(cxr_postprocess_params);
        case 2: return (int)sizeof(cxr_postprocess_buffers);
        case 3: return (int)sizeof(cxr_overlay_params);
        default: return -1;
    }
}

// Sorted shift offsets (S,) into `out`, exactly tile.shift_offsets.
CXR_API int cxr_shift_offsets(int steps, int patch_size, int* out) {
    if (!out) return CXR_ERR_NULL_POINTER;
    return compute_offsets(steps, patch_size, out);
}

CXR_API int cxr_postprocess_workspace_bytes(const cxr_postprocess_params* prm, int want_raw, int want_scaled,
                                    size_t* bytes) {
    if (!prm || !bytes) return CXR_ERR_NULL_POINTER;
    Geometry geo;
    int status = make_geometry(prm->image_size, prm->patch_size, prm->steps, &geo);
    if (status) return status;
    if (prm->num_classes < 1 || prm->num_classes > CXR_MAX_CLASSES) return CXR_ERR_BAD_CLASSES;
    *bytes = workspace_floats(geo, prm->num_classes, want_raw != 0, want_scaled != 0) * sizeof(float);
    return CXR_OK;
}

// Dynamic shared memory per block the column pass needs: S*C*(G+1)*4 bytes (host only).
CXR_API int cxr_postprocess_shared_bytes(const cxr_postprocess_params* prm, size_t* bytes) {
    if (!prm || !bytes) return CXR_ERR_NULL_POINTER;
    Geometry geo;
    int status = make_geometry(prm->image_size, prm->patch_size, prm->steps, &geo);
    if (status) return status;
    if (prm->num_classes < 1 || prm->num_classes > CXR_MAX_CLASSES) return CXR_ERR_BAD_CLASSES;
    *bytes = column_shared_bytes(geo, prm->num_classes);
    return CXR_OK;
}

// cudaDevAttrMaxSharedMemoryPerBlockOptin of the current device; CXR_ERR_CUDA without one.
CXR_API int cxr_device_shared_memory_optin(int* bytes) {
    if (!bytes) return CXR_ERR_NULL_POINTER;
    *bytes = 0;
    int status = shared_memory_optin(bytes);
    if (status) cudaGetLastError();  // clear a sticky "no device" error for later calls
    return status;
}

CXR_API int cxr_device_count(int* count) {
    if (!count) return CXR_ERR_NULL_POINTER;
    *count = 0;
    cudaError_t err = cudaGetDeviceCount(count);
    if (err != cudaSuccess) {
        *count = 0;
        cudaGetLastError();  // clear the sticky "no device" error for later calls
    }
    return record(err);
}

// ---- launchers -------------------------------------------------------------------------------

// image (N, N) float32 -> out ((k1-k0)*G*G, 1, P, P) in out_dtype.
CXR_API int cxr_tile_launch(const cxr_tile_params* prm, const float* image, void* out, cudaStream_t stream) {
    if (!prm || !image || !out) return CXR_ERR_NULL_POINTER;
    Geometry geo;
    int status = make_geometry(prm->image_size, prm->patch_size, prm->steps, &geo);
    if (status) return status;
    if (check_dtype(prm->out_dtype)) return CXR_ERR_BAD_DTYPE;
    const int k_count = geo.s * geo.s;
    if (prm->shift_begin < 0 || prm->shift_begin >= prm->shift_end || prm->shift_end > k_count)
        return CXR_ERR_BAD_RANGE;
    const uintptr_t align = prm->out_dtype == CXR_FLOAT32 ? 16 : 8;
    if ((uintptr_t)out % align) return CXR_ERR_MISALIGNED;

    const int quads = geo.p / 4;
    const int rows = quads >= 256 ? 1 : 256 / quads;
    const dim3 block(quads, rows < geo.p ? rows : geo.p);
    const dim3 grid(geo.g * geo.g, prm->shift_end - prm->shift_begin);
    if (prm->out_dtype == CXR_FLOAT32)
        tile_kernel<float><<<grid, block, 0, stream>>>(image, static_cast<float*>(out), geo, prm->shift_begin);
    else
        tile_kernel<__half><<<grid, block, 0, stream>>>(image, static_cast<__half*>(out), geo, prm->shift_begin);
    return check_launch();
}

// Patch logits of all K shifts -> shift/image logits, probabilities, raw and/or scaled maps.
CXR_API int cxr_postprocess_launch(const cxr_postprocess_params* prm, const cxr_postprocess_buffers* buf,
                           cudaStream_t stream) {
    if (!prm || !buf || !buf->logits || !buf->shift_logits) return CXR_ERR_NULL_POINTER;
    Geometry geo;
    int status = make_geometry(prm->image_size, prm->patch_size, prm->steps, &geo);
    if (status) return status;
    if (check_dtype(prm->logits_dtype)) return CXR_ERR_BAD_DTYPE;
    if (prm->num_classes < 1 || prm->num_classes > CXR_MAX_CLASSES) return CXR_ERR_BAD_CLASSES;
    if ((buf->raw || buf->scaled) && !buf->workspace) return CXR_ERR_NULL_POINTER;
    if (prm->logits_dtype == CXR_FLOAT32) return launch_postprocess<float>(*prm, *buf, geo, stream);
    return launch_postprocess<__half>(*prm, *buf, geo, stream);
}

// gray (h, w) uint8 + maps (M, N, N) float32 -> out (num_overlays, h, w, 3) uint8 RGB.
// vmax_device: NULL to use prm->vmax[o], else a device (M,) float32 read at map_index[o].
CXR_API int cxr_overlay_launch(const cxr_overlay_params* prm, const unsigned char* gray, const float* maps,
                       const float* vmax_device, unsigned char* out, cudaStream_t stream) {
    if (!prm || !gray || !maps || !out) return CXR_ERR_NULL_POINTER;
    if (prm->image_size <= 0 || prm->image_size > CXR_MAX_IMAGE_SIZE) return CXR_ERR_BAD_GEOMETRY;
    if (prm->height <= 0 || prm->width <= 0 || prm->height > CXR_MAX_DISPLAY_SIDE ||
        prm->width > CXR_MAX_DISPLAY_SIDE || prm->crop_side <= 0 || prm->crop_top < 0 || prm->crop_left < 0 ||
        prm->crop_top + prm->crop_side > prm->height || prm->crop_left + prm->crop_side > prm->width ||
        prm->num_overlays < 1 || prm->num_overlays > CXR_MAX_OVERLAYS)
        return CXR_ERR_BAD_OVERLAY;
    for (int o = 0; o < prm->num_overlays; ++o)
        if (prm->map_index[o] < 0) return CXR_ERR_BAD_OVERLAY;
    const dim3 block(32, 8);
    const dim3 grid((prm->width + 31) / 32, (prm->height + 7) / 8, prm->num_overlays);
    overlay_kernel<<<grid, block, 0, stream>>>(gray, maps, vmax_device, out, *prm);
    return check_launch();
}

}  // extern "C"
