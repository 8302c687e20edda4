// lowbit's CUDA kernels. Compiled at run time by NVRTC for the device's compute capability
// (src/device.rs), so no header is included: NVRTC has no system headers by default, and the
// half/bfloat conversions are two lines of PTX or bit math here.
//
// Activations are f32, row-major [rows, width]. Weights are stored per row in 16-byte chunks
// (`ld` chunks per row, zero-padded), so a lane loads one chunk with one 128-bit load and a warp
// reads 512 contiguous bytes of a row. Formats (FMT) and elements per chunk (E):
//   0 f32 (4), 1 f16 (8), 2 bf16 (8), 3 int4 (32, low nibble first, lowbit's order),
//   4 int8 (16).
// Quantized formats carry one (scale, zero) pair per (row, group) in `prm`, as two f16 (hp) or
// two f32 (fp); w = (q - zero) * scale, with zero = 2^(bits-1) for symmetric tensors.

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;

#define FULL_MASK 0xffffffffu
#define NEG_INF __int_as_float(0xff800000)

struct __align__(4) hp { u16 s, z; };
struct __align__(8) fp { float s, z; };

__device__ __forceinline__ float h2f(u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}
__device__ __forceinline__ float bf2f(u16 b) { return __uint_as_float(((u32)b) << 16); }

__device__ __forceinline__ void ld_param(const hp* p, float& s, float& z) {
    hp v = *p;
    s = h2f(v.s);
    z = h2f(v.z);
}
__device__ __forceinline__ void ld_param(const fp* p, float& s, float& z) {
    fp v = *p;
    s = v.s;
    z = v.z;
}

// Sum over the warp (float, or double for the block sum); every lane gets the total.
template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}

// The weight formats every product and lookup kernel is built for: kernel-name suffix, FMT (the
// Chunk formats below) and parameter type (f32, f16 and bf16 carry none; hp is a placeholder).
#define FOR_EACH_FORMAT(X) \
    X(w4h, 3, hp)          \
    X(w4f, 3, fp)          \
    X(w8h, 4, hp)          \
    X(w8f, 4, fp)          \
    X(f32, 0, hp)          \
    X(f16, 1, hp)          \
    X(bf16, 2, hp)

// Byte k (0..3, a compile-time constant) of w as a float: the byte is placed in the mantissa of
// 2^23 by one byte permute, then 2^23 is subtracted (exact for 0..255).
#define BYTE_F(w, k) (__uint_as_float(__byte_perm((w), 0x4B000000u, 0x7540u | (k))) - 8388608.0f)

template <int FMT> struct Chunk;
template <> struct Chunk<0> {
    enum { E = 4, QUANT = 0 };
    __device__ __forceinline__ static void dec(uint4 w, float* q) {
        q[0] = __uint_as_float(w.x);
        q[1] = __uint_as_float(w.y);
        q[2] = __uint_as_float(w.z);
        q[3] = __uint_as_float(w.w);
    }
};
template <> struct Chunk<1> {
    enum { E = 8, QUANT = 0 };
    __device__ __forceinline__ static void dec(uint4 w, float* q) {
        u32 a[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
        for (int i = 0; i < 4; i++) {
            q[2 * i] = h2f((u16)(a[i] & 0xffffu));
            q[2 * i + 1] = h2f((u16)(a[i] >> 16));
        }
    }
};
template <> struct Chunk<2> {
    enum { E = 8, QUANT = 0 };
    __device__ __forceinline__ static void dec(uint4 w, float* q) {
        u32 a[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
        for (int i = 0; i < 4; i++) {
            q[2 * i] = __uint_as_float(a[i] << 16);
            q[2 * i + 1] = __uint_as_float(a[i] & 0xffff0000u);
        }
    }
};
template <> struct Chunk<3> {
    enum { E = 32, QUANT = 1 };
    __device__ __forceinline__ static void dec(uint4 w, float* q) {
        u32 a[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
        for (int i = 0; i < 4; i++) {
            u32 lo = a[i] & 0x0F0F0F0Fu;         // elements 8i + 0, 2, 4, 6
            u32 hi = (a[i] >> 4) & 0x0F0F0F0Fu;  // elements 8i + 1, 3, 5, 7
            q[8 * i + 0] = BYTE_F(lo, 0);
            q[8 * i + 1] = BYTE_F(hi, 0);
            q[8 * i + 2] = BYTE_F(lo, 1);
            q[8 * i + 3] = BYTE_F(hi, 1);
            q[8 * i + 4] = BYTE_F(lo, 2);
            q[8 * i + 5] = BYTE_F(hi, 2);
            q[8 * i + 6] = BYTE_F(lo, 3);
            q[8 * i + 7] = BYTE_F(hi, 3);
        }
    }
};
template <> struct Chunk<4> {
    enum { E = 16, QUANT = 1 };
    __device__ __forceinline__ static void dec(uint4 w, float* q) {
        u32 a[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
        for (int i = 0; i < 4; i++) {
            q[4 * i + 0] = BYTE_F(a[i], 0);
            q[4 * i + 1] = BYTE_F(a[i], 1);
            q[4 * i + 2] = BYTE_F(a[i], 2);
            q[4 * i + 3] = BYTE_F(a[i], 3);
        }
    }
};

// One weight element (row r, column k) as f32: the GEMM tiles and the embedding lookup.
template <int FMT, typename P>
__device__ __forceinline__ float w_elem(const u8* W, const P* prm, int r, int k, int ldb, int gsz, int ng) {
    const u8* row = W + (size_t)r * ldb;
    if (FMT == 0) return ((const float*)row)[k];
    if (FMT == 1) return h2f(((const u16*)row)[k]);
    if (FMT == 2) return bf2f(((const u16*)row)[k]);
    float q;
    if (FMT == 3) {
        u8 b = row[k >> 1];
        q = (float)((k & 1) ? (b >> 4) : (b & 15));
    } else {
        q = (float)row[k];
    }
    float s, z;
    ld_param(prm + (size_t)r * ng + k / gsz, s, z);
    return (q - z) * s;
}

// GEMV: out[y, row] = sum_k x[y, k] * W[row, k] for the activation row y = blockIdx.y. Each warp
// owns R consecutive weight rows and walks their chunks with its 32 lanes, U chunks per lane per
// step (all U * R 128-bit loads issued before the first use); the activation chunk is loaded once
// and reused for the R rows. Quantized products are scale * (sum q x - zero * sum x) per chunk
// (a chunk never straddles a group).
template <int FMT, int R, typename P>
__device__ __forceinline__ void gemv_chunk(const uint4 (&w)[R], const P* __restrict__ prm,
                                           const float* __restrict__ x, float (&acc)[R], int row0,
                                           int rows, int cols, int c, int gsz, int ng, int xvec) {
    const int E = Chunk<FMT>::E;
    const int k0 = c * E;
    float xv[E];
    if (xvec && k0 + E <= cols) {
        const float4* xp = (const float4*)(x + k0);
#pragma unroll
        for (int i = 0; i < E / 4; i++) {
            float4 t = __ldg(xp + i);
            xv[4 * i] = t.x;
            xv[4 * i + 1] = t.y;
            xv[4 * i + 2] = t.z;
            xv[4 * i + 3] = t.w;
        }
    } else {
#pragma unroll
        for (int i = 0; i < E; i++) xv[i] = (k0 + i < cols) ? x[k0 + i] : 0.f;
    }
    float xs = 0.f;
    if (Chunk<FMT>::QUANT) {
#pragma unroll
        for (int i = 0; i < E; i++) xs += xv[i];
    }
#pragma unroll
    for (int r = 0; r < R; r++) {
        float q[E];
        Chunk<FMT>::dec(w[r], q);
        float d0 = 0.f, d1 = 0.f, d2 = 0.f, d3 = 0.f;
#pragma unroll
        for (int i = 0; i < E; i += 4) {
            d0 = fmaf(q[i], xv[i], d0);
            d1 = fmaf(q[i + 1], xv[i + 1], d1);
            d2 = fmaf(q[i + 2], xv[i + 2], d2);
            d3 = fmaf(q[i + 3], xv[i + 3], d3);
        }
        float d = (d0 + d1) + (d2 + d3);
        if (Chunk<FMT>::QUANT) {
            int row = min(row0 + r, rows - 1);
            float s, z;
            ld_param(prm + (size_t)row * ng + k0 / gsz, s, z);
            acc[r] = fmaf(s, d - z * xs, acc[r]);
        } else {
            acc[r] += d;
        }
    }
}

template <int FMT, int R, int U, typename P>
__device__ __forceinline__ void gemv(const uint4* __restrict__ W, const P* __restrict__ prm,
                                     const float* __restrict__ x, float* __restrict__ out, int rows,
                                     int cols, int ld, int gsz, int ng, int xvec) {
    const int E = Chunk<FMT>::E;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int row0 = (blockIdx.x * (blockDim.x >> 5) + warp) * R;
    if (row0 >= rows) return;
    x += (size_t)blockIdx.y * cols;
    out += (size_t)blockIdx.y * rows;
    float acc[R];
#pragma unroll
    for (int r = 0; r < R; r++) acc[r] = 0.f;
    const int nch = (cols + E - 1) / E;
    for (int c0 = lane; c0 < nch; c0 += 32 * U) {
        uint4 w[U][R];
#pragma unroll
        for (int u = 0; u < U; u++) {
            int c = min(c0 + 32 * u, nch - 1);
#pragma unroll
            for (int r = 0; r < R; r++) {
                int row = min(row0 + r, rows - 1);
                w[u][r] = __ldg(W + (size_t)row * ld + c);
            }
        }
#pragma unroll
        for (int u = 0; u < U; u++) {
            if (c0 + 32 * u < nch) gemv_chunk<FMT, R, P>(w[u], prm, x, acc, row0, rows, cols, c0 + 32 * u, gsz, ng, xvec);
        }
    }
#pragma unroll
    for (int r = 0; r < R; r++) {
        float v = warp_sum(acc[r]);
        if (lane == 0 && row0 + r < rows) out[row0 + r] = v;
    }
}

// gemv_<format>_r<R>u<U>.
#define GEMV_KERNEL(SUF, FMT, P, R, U)                                                              \
    extern "C" __global__ void __launch_bounds__(128)                                               \
        gemv_##SUF##_r##R##u##U(const uint4* W, const P* prm, const float* x, float* out, int rows, \
                                int cols, int ld, int gsz, int ng, int xvec) {                      \
        gemv<FMT, R, U, P>(W, prm, x, out, rows, cols, ld, gsz, ng, xvec);                          \
    }
#define GEMV_R4U1(SUF, FMT, P) GEMV_KERNEL(SUF, FMT, P, 4, 1)

// INT4 with f16 parameters, the decode format: variants for the benchmark to choose from
// (r4u1, the default, comes with every format).
GEMV_KERNEL(w4h, 3, hp, 1, 1)
GEMV_KERNEL(w4h, 3, hp, 2, 1)
GEMV_KERNEL(w4h, 3, hp, 8, 1)
GEMV_KERNEL(w4h, 3, hp, 1, 4)
GEMV_KERNEL(w4h, 3, hp, 2, 2)
GEMV_KERNEL(w4h, 3, hp, 4, 2)
FOR_EACH_FORMAT(GEMV_R4U1)

// The operands of a tiled GEMM, out[m, rows] = x[m, cols] * W^T (W in format FMT, `ldb` bytes
// per row), with the bounds-checked element reads both GEMMs fill their tiles with.
template <int FMT, typename P>
struct Operands {
    const u8* __restrict__ W;
    const P* __restrict__ prm;
    const float* __restrict__ x;
    float* __restrict__ out;
    int m, rows, cols, ldb, gsz, ng;

    // x[gm, gk], zero outside x.
    __device__ __forceinline__ float x_at(int gm, int gk) const {
        return (gm < m && gk < cols) ? x[(size_t)gm * cols + gk] : 0.f;
    }
    // W[gn, gk] dequantized, zero outside W.
    __device__ __forceinline__ float w_at(int gn, int gk) const {
        return (gn < rows && gk < cols) ? w_elem<FMT, P>(W, prm, gn, gk, ldb, gsz, ng) : 0.f;
    }
};

// Tiled GEMM for prefill: 64x64 output tiles, 256 threads each computing 4x4, the weight tile
// dequantized to f32 in shared memory. Correct first; the tensor-core version is below.
#define BM 64
#define BN 64
#define BK 16
template <int FMT, typename P>
__device__ __forceinline__ void gemm(const Operands<FMT, P>& a) {
    const int m = a.m, rows = a.rows, cols = a.cols;
    float* __restrict__ out = a.out;
    __shared__ float xs[BK][BM + 4];
    __shared__ float ws[BK][BN + 4];
    const int tid = threadIdx.x;
    const int tx = tid & 15, ty = tid >> 4;
    const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
    float acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) acc[i][j] = 0.f;
    for (int k0 = 0; k0 < cols; k0 += BK) {
#pragma unroll
        for (int i = 0; i < (BM * BK) / 256; i++) {
            int idx = tid + i * 256;
            int mm = idx / BK, kk = idx % BK;
            xs[kk][mm] = a.x_at(m0 + mm, k0 + kk);
        }
#pragma unroll
        for (int i = 0; i < (BN * BK) / 256; i++) {
            int idx = tid + i * 256;
            int nn = idx / BK, kk = idx % BK;
            ws[kk][nn] = a.w_at(n0 + nn, k0 + kk);
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < BK; kk++) {
            float xr[4], wr[4];
#pragma unroll
            for (int i = 0; i < 4; i++) xr[i] = xs[kk][ty * 4 + i];
#pragma unroll
            for (int j = 0; j < 4; j++) wr[j] = ws[kk][tx * 4 + j];
#pragma unroll
            for (int i = 0; i < 4; i++)
#pragma unroll
                for (int j = 0; j < 4; j++) acc[i][j] = fmaf(xr[i], wr[j], acc[i][j]);
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; i++) {
        int gm = m0 + ty * 4 + i;
        if (gm >= m) continue;
#pragma unroll
        for (int j = 0; j < 4; j++) {
            int gn = n0 + tx * 4 + j;
            if (gn < rows) out[(size_t)gm * rows + gn] = acc[i][j];
        }
    }
}

// A GEMM kernel NAME##SUF running IMPL<FMT, P> with THREADS threads per block.
#define TILED_KERNEL(NAME, IMPL, THREADS, SUF, FMT, P)                                              \
    extern "C" __global__ void __launch_bounds__(THREADS)                                           \
        NAME##SUF(const u8* W, const P* prm, const float* x, float* out, int m, int rows, int cols, \
                  int ldb, int gsz, int ng) {                                                       \
        IMPL<FMT, P>(Operands<FMT, P>{W, prm, x, out, m, rows, cols, ldb, gsz, ng});               \
    }
#define GEMM_KERNEL(SUF, FMT, P) TILED_KERNEL(gemm_, gemm, 256, SUF, FMT, P)
FOR_EACH_FORMAT(GEMM_KERNEL)

// Tensor-core GEMM (opt-in: LOWBIT_CUDA_TENSOR_CORES=1, and Cuda::linear_tensor_cores):
// out[m, rows] = x[m, cols] * W^T with mma.sync m16n8k16, f16 operands and f32 accumulation, the
// W4A16 arithmetic of Marlin-style kernels. Activations and dequantized weights are rounded to
// f16 (about 5e-4 relative each), so it is not the default: the FP32 GEMM above matches the CPU.
// 64x64 block tiles, 4 warps of 32x32, K steps of 32; the weight tile is dequantized element by
// element into shared memory (correct first; a cp.async pipeline is the next step).
__device__ __forceinline__ u16 f2h(float f) {
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

#define TBM 64
#define TBN 64
#define TBK 32
template <int FMT, typename P>
__device__ __forceinline__ void gemm_tc(const Operands<FMT, P>& o) {
    const int m = o.m, rows = o.rows, cols = o.cols;
    float* __restrict__ out = o.out;
    // Rows padded by 8 halves (80 bytes): the fragment loads of a warp hit 32 distinct banks.
    __shared__ __align__(16) u16 As[TBM][TBK + 8];
    __shared__ __align__(16) u16 Bs[TBN][TBK + 8];
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int g = lane >> 2, tg = lane & 3;
    const int m0 = blockIdx.y * TBM, n0 = blockIdx.x * TBN;
    const int wm = (warp >> 1) * 32, wn = (warp & 1) * 32;
    float acc[2][4][4];
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
        for (int j = 0; j < 4; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[i][j][e] = 0.f;
    for (int k0 = 0; k0 < cols; k0 += TBK) {
        for (int i = tid; i < TBM * TBK; i += blockDim.x) {
            int mm = i / TBK, kk = i % TBK;
            As[mm][kk] = f2h(o.x_at(m0 + mm, k0 + kk));
        }
        for (int i = tid; i < TBN * TBK; i += blockDim.x) {
            int nn = i / TBK, kk = i % TBK;
            Bs[nn][kk] = f2h(o.w_at(n0 + nn, k0 + kk));
        }
        __syncthreads();
#pragma unroll
        for (int ks = 0; ks < TBK; ks += 16) {
            u32 a[2][4], b[4][2];
#pragma unroll
            for (int i = 0; i < 2; i++) {
                int r = wm + i * 16 + g;
                a[i][0] = *(const u32*)&As[r][ks + tg * 2];
                a[i][1] = *(const u32*)&As[r + 8][ks + tg * 2];
                a[i][2] = *(const u32*)&As[r][ks + tg * 2 + 8];
                a[i][3] = *(const u32*)&As[r + 8][ks + tg * 2 + 8];
            }
#pragma unroll
            for (int j = 0; j < 4; j++) {
                int c = wn + j * 8 + g;
                b[j][0] = *(const u32*)&Bs[c][ks + tg * 2];
                b[j][1] = *(const u32*)&Bs[c][ks + tg * 2 + 8];
            }
#pragma unroll
            for (int i = 0; i < 2; i++)
#pragma unroll
                for (int j = 0; j < 4; j++)
                    asm volatile(
                        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
                        "{%8,%9}, {%0,%1,%2,%3};"
                        : "+f"(acc[i][j][0]), "+f"(acc[i][j][1]), "+f"(acc[i][j][2]), "+f"(acc[i][j][3])
                        : "r"(a[i][0]), "r"(a[i][1]), "r"(a[i][2]), "r"(a[i][3]), "r"(b[j][0]), "r"(b[j][1]));
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) {
            int r = m0 + wm + i * 16 + g;
            int c = n0 + wn + j * 8 + tg * 2;
#pragma unroll
            for (int h = 0; h < 2; h++) {
                int rr = r + 8 * h;
                if (rr >= m) continue;
                if (c < rows) out[(size_t)rr * rows + c] = acc[i][j][2 * h];
                if (c + 1 < rows) out[(size_t)rr * rows + c + 1] = acc[i][j][2 * h + 1];
            }
        }
}

#define GEMM_TC_KERNEL(SUF, FMT, P) TILED_KERNEL(gemm_tc_, gemm_tc, 128, SUF, FMT, P)
FOR_EACH_FORMAT(GEMM_TC_KERNEL)

// Embedding rows: out[t, :] = W[tok[t], :] dequantized; one block per token.
#define EMBED_KERNEL(SUF, FMT, P)                                                                   \
    extern "C" __global__ void embed_##SUF(const u8* W, const P* prm, const u32* tok, float* out,  \
                                           int cols, int ldb, int gsz, int ng) {                   \
        int t = blockIdx.x;                                                                         \
        int r = (int)tok[t];                                                                        \
        for (int k = threadIdx.x; k < cols; k += blockDim.x)                                        \
            out[(size_t)t * cols + k] = w_elem<FMT, P>(W, prm, r, k, ldb, gsz, ng);                 \
    }
FOR_EACH_FORMAT(EMBED_KERNEL)

// Sum over the block (any blockDim that is a multiple of 32, at most 1024), in f64 like the
// CPU's scalar reference; every thread gets the total.
__device__ double block_sum(double v) {
    __shared__ double part[32];
    __shared__ double total;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    v = warp_sum(v);
    if (lane == 0) part[warp] = v;
    __syncthreads();
    if (warp == 0) {
        double s = warp_sum(lane < (int)(blockDim.x >> 5) ? part[lane] : 0.0);
        if (lane == 0) total = s;
    }
    __syncthreads();
    return total;
}

// RMSNorm of each row of d values (one block per row); out may alias x.
extern "C" __global__ void rms_norm(const float* x, const float* w, float* out, int d, float eps) {
    const size_t base = (size_t)blockIdx.x * d;
    double s = 0.0;
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        double v = x[base + i];
        s += v * v;
    }
    s = block_sum(s);
    const double inv = 1.0 / sqrt(s / d + (double)eps);
    for (int i = threadIdx.x; i < d; i += blockDim.x) out[base + i] = (float)((double)w[i] * (double)x[base + i] * inv);
}

extern "C" __global__ void add(float* x, const float* y, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) x[i] += y[i];
}

extern "C" __global__ void add_bias(float* x, const float* b, int n, int d) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) x[i] += b[i % d];
}

// g = silu(g) * u, in f64 like the scalar reference (exp in f32 differs by an ulp or two).
extern "C" __global__ void swiglu(float* g, const float* u, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        double v = g[i];
        g[i] = (float)(v / (1.0 + exp(-v)) * (double)u[i]);
    }
}

// Hugging Face's rotate-half RoPE: in each head the pair (i, i + hd/2) turns by row t's angle i.
extern "C" __global__ void rope(float* x, const float* cs, const float* sn, int m, int width, int hd) {
    const int half = hd / 2, nh = width / hd;
    const long total = (long)m * nh * half;
    for (long idx = blockIdx.x * (long)blockDim.x + threadIdx.x; idx < total; idx += (long)gridDim.x * blockDim.x) {
        int i = (int)(idx % half);
        long th = idx / half;
        int h = (int)(th % nh);
        long t = th / nh;
        float* p = x + t * width + (long)h * hd;
        float c = cs[t * half + i], s = sn[t * half + i];
        float a = p[i], b = p[i + half];
        p[i] = a * c - b * s;
        p[i + half] = b * c + a * s;
    }
}

// Causal GQA attention: block (head, query t) over keys first..=pos, pos = past + t. Each warp
// runs an online softmax over every ATT_WARPS-th key (flash-decoding's split, inside one block),
// then the warps' partial states are merged. head_dim <= 256 (8 lanes-worth per lane).
#define ATT_WARPS 4
extern "C" __global__ void __launch_bounds__(ATT_WARPS * 32)
    attention(const float* __restrict__ q, const float* __restrict__ k, const float* __restrict__ v,
              float* __restrict__ out, int heads, int kv_heads, int hd, int past, int window, float scale) {
    const int h = blockIdx.x, t = blockIdx.y;
    const int pos = past + t;
    const int kvh = h / (heads / kv_heads);
    const int kvd = kv_heads * hd, qd = heads * hd;
    const int first = window > 0 ? max(0, pos + 1 - window) : 0;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    float qv[8], acc[8];
#pragma unroll
    for (int i = 0; i < 8; i++) {
        int d = lane + 32 * i;
        qv[i] = d < hd ? q[(size_t)t * qd + h * hd + d] : 0.f;
        acc[i] = 0.f;
    }
    float mx = NEG_INF, l = 0.f;
    for (int j = first + warp; j <= pos; j += ATT_WARPS) {
        const float* kr = k + (size_t)j * kvd + kvh * hd;
        float s = 0.f;
#pragma unroll
        for (int i = 0; i < 8; i++) {
            int d = lane + 32 * i;
            if (d < hd) s = fmaf(qv[i], kr[d], s);
        }
        s = warp_sum(s) * scale;
        float mn = fmaxf(mx, s);
        float corr = expf(mx - mn);
        float p = expf(s - mn);
        l = l * corr + p;
        const float* vr = v + (size_t)j * kvd + kvh * hd;
#pragma unroll
        for (int i = 0; i < 8; i++) {
            int d = lane + 32 * i;
            acc[i] = acc[i] * corr + (d < hd ? p * vr[d] : 0.f);
        }
        mx = mn;
    }
    __shared__ float smx[ATT_WARPS], sl[ATT_WARPS];
    __shared__ float sacc[ATT_WARPS][256];
    if (lane == 0) {
        smx[warp] = mx;
        sl[warp] = l;
    }
#pragma unroll
    for (int i = 0; i < 8; i++) {
        int d = lane + 32 * i;
        if (d < hd) sacc[warp][d] = acc[i];
    }
    __syncthreads();
    float M = NEG_INF;
#pragma unroll
    for (int w = 0; w < ATT_WARPS; w++) M = fmaxf(M, smx[w]);
    float L = 0.f;
    float f[ATT_WARPS];
#pragma unroll
    for (int w = 0; w < ATT_WARPS; w++) {
        f[w] = sl[w] > 0.f ? expf(smx[w] - M) : 0.f;
        L += sl[w] * f[w];
    }
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float o = 0.f;
#pragma unroll
        for (int w = 0; w < ATT_WARPS; w++) o += sacc[w][d] * f[w];
        out[(size_t)t * qd + h * hd + d] = o / L;
    }
}

// Keeps the larger of (best, bi) and the other lanes' pairs, the lower index on ties; every lane
// gets the warp's winner.
__device__ __forceinline__ void warp_argmax(float& best, int& bi) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        float ov = __shfl_xor_sync(FULL_MASK, best, o);
        int oi = __shfl_xor_sync(FULL_MASK, bi, o);
        if (ov > best || (ov == best && oi < bi)) {
            best = ov;
            bi = oi;
        }
    }
}

// Index of the largest value of each row of n (the first one on ties; NaN never wins), one block
// of 1024 threads per row: greedy decoding's LM head reduction on the device.
extern "C" __global__ void __launch_bounds__(1024) argmax(const float* x, int n, u32* out) {
    __shared__ float sv[32];
    __shared__ int si[32];
    const float* row = x + (size_t)blockIdx.x * n;
    float best = NEG_INF;
    int bi = 0x7fffffff;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        float v = row[i];
        if (v > best || (v == best && i < bi)) {
            best = v;
            bi = i;
        }
    }
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    warp_argmax(best, bi);
    if (lane == 0) {
        sv[warp] = best;
        si[warp] = bi;
    }
    __syncthreads();
    if (warp == 0) {
        int nw = blockDim.x >> 5;
        best = lane < nw ? sv[lane] : NEG_INF;
        bi = lane < nw ? si[lane] : 0x7fffffff;
        warp_argmax(best, bi);
        if (lane == 0) out[blockIdx.x] = bi == 0x7fffffff ? 0u : (u32)bi;
    }
}
