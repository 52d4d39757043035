// Every per-layer statistic of the flat buffers in one read, compiled at run time by NVRTC
// (src/train/fused.rs, which prepends THREADS, PER_THREAD, HIST_BINS, HIST_MIN_EXP and
// HIST_MAX_EXP as macros).
//
// The buffers are cut into chunks of at most THREADS * PER_THREAD elements, each inside
// one layer; one block reduces one chunk into a part, and a second kernel, one block per
// layer, combines the layer's parts in a fixed order, so the figures are the same from run
// to run. A chunk's moments take two passes in float64 over the values its threads hold
// in registers (PER_THREAD each); a layer's chunks are combined by Chan, Golub and
// LeVeque's pairwise update: as exact as two passes over the layer. Counts come from the
// floats' bits, as in
// src/train/host.rs: |x| as bits orders every float by magnitude, NaN above +Inf.

#define WARPS (THREADS / 32)
#define FULL_MASK 0xffffffffu
#define INF_BITS 0x7f800000u

// A chunk's counts over |x| as bits: the largest, exact zeros, below the threshold, NaN or
// ±Inf; and Σx.
struct Tally {
    double sum;
    unsigned int max_bits, zeros, below, nonfinite;
};

__device__ __forceinline__ Tally empty_tally() {
    Tally t;
    t.sum = 0.0;
    t.max_bits = t.zeros = t.below = t.nonfinite = 0u;
    return t;
}

// Part of a layer: element count, mean, Σ(x − mean)², largest |x| as bits, exact zeros,
// |x| below the threshold, NaN or ±Inf (64-bit: a layer may pass 2^32 elements).
struct Part {
    double n, mean, m2;
    unsigned int max_bits;
    unsigned long long zeros, below, nonfinite;
};

__device__ __forceinline__ Part empty_part() {
    Part p;
    p.n = 0.0;
    p.mean = 0.0;
    p.m2 = 0.0;
    p.max_bits = 0u;
    p.zeros = p.below = p.nonfinite = 0ull;
    return p;
}

// How two values of each kind a block reduces combine, and how one is read from the lane
// `offset` above in the warp.
__device__ __forceinline__ void merge(double &a, double b) { a += b; }

__device__ __forceinline__ double shuffle_down(double v, int offset) {
    return __shfl_down_sync(FULL_MASK, v, offset);
}

__device__ __forceinline__ void merge(double2 &a, const double2 &b) {
    a.x += b.x;
    a.y += b.y;
}

__device__ __forceinline__ double2 shuffle_down(const double2 &v, int offset) {
    double2 u;
    u.x = __shfl_down_sync(FULL_MASK, v.x, offset);
    u.y = __shfl_down_sync(FULL_MASK, v.y, offset);
    return u;
}

__device__ __forceinline__ void merge(Tally &a, const Tally &b) {
    a.sum += b.sum;
    a.max_bits = max(a.max_bits, b.max_bits);
    a.zeros += b.zeros;
    a.below += b.below;
    a.nonfinite += b.nonfinite;
}

__device__ __forceinline__ Tally shuffle_down(const Tally &t, int offset) {
    Tally u;
    u.sum = __shfl_down_sync(FULL_MASK, t.sum, offset);
    u.max_bits = __shfl_down_sync(FULL_MASK, t.max_bits, offset);
    u.zeros = __shfl_down_sync(FULL_MASK, t.zeros, offset);
    u.below = __shfl_down_sync(FULL_MASK, t.below, offset);
    u.nonfinite = __shfl_down_sync(FULL_MASK, t.nonfinite, offset);
    return u;
}

// Chan, Golub and LeVeque's pairwise update.
__device__ __forceinline__ void merge(Part &a, const Part &b) {
    if (b.n > 0.0) {
        if (a.n == 0.0) {
            a.n = b.n;
            a.mean = b.mean;
            a.m2 = b.m2;
        } else {
            const double n = a.n + b.n;
            const double share = b.n / n;
            const double delta = b.mean - a.mean;
            a.mean += delta * share;
            a.m2 += b.m2 + delta * delta * a.n * share;
            a.n = n;
        }
    }
    a.max_bits = max(a.max_bits, b.max_bits);
    a.zeros += b.zeros;
    a.below += b.below;
    a.nonfinite += b.nonfinite;
}

__device__ __forceinline__ Part shuffle_down(const Part &p, int offset) {
    Part q;
    q.n = __shfl_down_sync(FULL_MASK, p.n, offset);
    q.mean = __shfl_down_sync(FULL_MASK, p.mean, offset);
    q.m2 = __shfl_down_sync(FULL_MASK, p.m2, offset);
    q.max_bits = __shfl_down_sync(FULL_MASK, p.max_bits, offset);
    q.zeros = __shfl_down_sync(FULL_MASK, p.zeros, offset);
    q.below = __shfl_down_sync(FULL_MASK, p.below, offset);
    q.nonfinite = __shfl_down_sync(FULL_MASK, p.nonfinite, offset);
    return q;
}

// The block's values merged, in thread 0: each warp's by a shuffle tree, then the warps'
// by warp 0 (a fixed order: the same result on every run). `empty` merges as nothing.
// Each kind has shared slots of its own, so reductions of different kinds may follow one
// another with no barrier between them.
template <class T> __device__ T reduce_block(T v, const T &empty) {
    __shared__ T warps[WARPS];
    for (int offset = 16; offset > 0; offset >>= 1) {
        merge(v, shuffle_down(v, offset));
    }
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0) {
        warps[warp] = v;
    }
    __syncthreads();
    if (warp == 0) {
        v = lane < WARPS ? warps[lane] : empty;
        for (int offset = 16; offset > 0; offset >>= 1) {
            merge(v, shuffle_down(v, offset));
        }
    }
    return v;
}

// One chunk of the gradients a block, in two passes over the values its threads hold in
// registers: Σx and the counts, then Σ(x − mean)² about the chunk's mean. The chunk's
// (n, mean, m2) go to `moments`, its (max bits, zeros, below, nonfinite) to `counts`.
extern "C" __global__ void __launch_bounds__(THREADS) grad_chunks(
    const float *__restrict__ grads, const long long *__restrict__ starts,
    const int *__restrict__ lens, unsigned int below_bits,
    double *__restrict__ moments, unsigned int *__restrict__ counts) {
    __shared__ double chunk_mean;
    const int chunk = blockIdx.x;
    const float *x = grads + starts[chunk];
    const int len = lens[chunk];
    float v[PER_THREAD];
#pragma unroll
    for (int k = 0; k < PER_THREAD; k++) {
        const int i = k * THREADS + threadIdx.x;
        v[k] = i < len ? x[i] : 0.0f;
    }
    Tally t = empty_tally();
#pragma unroll
    for (int k = 0; k < PER_THREAD; k++) {
        if (k * THREADS + (int)threadIdx.x < len) {
            const unsigned int bits = __float_as_uint(v[k]) & 0x7fffffffu;
            t.sum += (double)v[k];
            t.max_bits = max(t.max_bits, bits);
            t.zeros += bits == 0u;
            t.below += bits < below_bits;
            t.nonfinite += bits >= INF_BITS;
        }
    }
    t = reduce_block(t, empty_tally());
    if (threadIdx.x == 0) {
        chunk_mean = t.sum / (double)len;
    }
    __syncthreads();
    const double mean = chunk_mean;
    double m2 = 0.0;
#pragma unroll
    for (int k = 0; k < PER_THREAD; k++) {
        if (k * THREADS + (int)threadIdx.x < len) {
            const double d = (double)v[k] - mean;
            m2 += d * d;
        }
    }
    m2 = reduce_block(m2, 0.0);
    if (threadIdx.x == 0) {
        moments[3 * chunk] = (double)len;
        moments[3 * chunk + 1] = mean;
        moments[3 * chunk + 2] = m2;
        counts[4 * chunk] = t.max_bits;
        counts[4 * chunk + 1] = t.zeros;
        counts[4 * chunk + 2] = t.below;
        counts[4 * chunk + 3] = t.nonfinite;
    }
}

// One layer a block: its chunks' parts (chunks first[layer] .. first[layer + 1]) merged
// into the rows of `out`, [7, layers] in the order of `Statistic::GRAD`: norm, max |g|,
// mean, sample std, zero fraction, NaN/Inf count, fraction below the threshold. A layer
// holding a NaN or an infinity has NaN norm, mean and std; max |g| is NaN where it holds
// a NaN.
extern "C" __global__ void __launch_bounds__(THREADS) grad_layers(
    const double *__restrict__ moments, const unsigned int *__restrict__ counts,
    const int *__restrict__ first, int layers, double *__restrict__ out) {
    const int layer = blockIdx.x;
    Part p = empty_part();
    for (int c = first[layer] + threadIdx.x; c < first[layer + 1]; c += THREADS) {
        Part q;
        q.n = moments[3 * (long long)c];
        q.mean = moments[3 * (long long)c + 1];
        q.m2 = moments[3 * (long long)c + 2];
        q.max_bits = counts[4 * (long long)c];
        q.zeros = counts[4 * (long long)c + 1];
        q.below = counts[4 * (long long)c + 2];
        q.nonfinite = counts[4 * (long long)c + 3];
        merge(p, q);
    }
    p = reduce_block(p, empty_part());
    if (threadIdx.x == 0) {
        const double n = p.n;
        double mean = p.mean, m2 = p.m2;
        if (p.nonfinite > 0ull || n == 0.0) {
            mean = nan("");
            m2 = nan("");
        }
        out[0 * layers + layer] = sqrt(m2 + n * mean * mean);
        out[1 * layers + layer] = (double)__uint_as_float(p.max_bits);
        out[2 * layers + layer] = mean;
        // n − 1 = 0 for a one-element layer: 0/0, NaN, as torch.std gives.
        out[3 * layers + layer] = sqrt(m2 / (n - 1.0));
        out[4 * layers + layer] = (double)p.zeros / n;
        out[5 * layers + layer] = (double)p.nonfinite;
        out[6 * layers + layer] = (double)p.below / n;
    }
}

// The power-of-two bucket of |x| (as bits): 0 for ±0, the smallest for subnormals and
// everything below 2^HIST_MIN_EXP, the largest finite one for everything at or above
// 2^HIST_MAX_EXP, the last for NaN and ±Inf.
__device__ __forceinline__ int bucket(unsigned int bits) {
    const int e = (int)(bits >> 23);
    if (e == 0) {
        return bits != 0u ? 1 : 0;
    }
    if (e == 255) {
        return HIST_BINS - 1;
    }
    return min(max(e - 127 - HIST_MIN_EXP + 1, 1), HIST_MAX_EXP - HIST_MIN_EXP + 1);
}

// One chunk of the gradients a block: its bucket counts added to its layer's HIST_BINS
// int64 counters in `out` (zeroed before; integer sums, so the order does not matter).
extern "C" __global__ void __launch_bounds__(THREADS) hist_chunks(
    const float *__restrict__ grads, const long long *__restrict__ starts,
    const int *__restrict__ lens, const int *__restrict__ layer_of,
    unsigned long long *__restrict__ out) {
    __shared__ unsigned int counts[HIST_BINS];
    const int chunk = blockIdx.x;
    const float *x = grads + starts[chunk];
    const int len = lens[chunk];
    // Every load issued before the first count.
    unsigned int bits[PER_THREAD];
#pragma unroll
    for (int k = 0; k < PER_THREAD; k++) {
        const int i = k * THREADS + threadIdx.x;
        bits[k] = i < len ? __float_as_uint(x[i]) & 0x7fffffffu : 0u;
    }
    for (int b = threadIdx.x; b < HIST_BINS; b += THREADS) {
        counts[b] = 0u;
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < PER_THREAD; k++) {
        if (k * THREADS + (int)threadIdx.x < len) {
            atomicAdd(&counts[bucket(bits[k])], 1u);
        }
    }
    __syncthreads();
    unsigned long long *layer = out + (long long)layer_of[chunk] * HIST_BINS;
    for (int b = threadIdx.x; b < HIST_BINS; b += THREADS) {
        if (counts[b] > 0u) {
            atomicAdd(&layer[b], (unsigned long long)counts[b]);
        }
    }
}

// One chunk of the weights a block: copied into `before`, and Σw² into sums[chunk].
extern "C" __global__ void __launch_bounds__(THREADS) snapshot_chunks(
    const float *__restrict__ weights, float *__restrict__ before,
    const long long *__restrict__ starts, const int *__restrict__ lens,
    double *__restrict__ sums) {
    const int chunk = blockIdx.x;
    const long long start = starts[chunk];
    const int len = lens[chunk];
    float v[PER_THREAD];
#pragma unroll
    for (int k = 0; k < PER_THREAD; k++) {
        const int i = k * THREADS + threadIdx.x;
        v[k] = i < len ? weights[start + i] : 0.0f;
    }
    double squares = 0.0;
#pragma unroll
    for (int k = 0; k < PER_THREAD; k++) {
        const int i = k * THREADS + threadIdx.x;
        if (i < len) {
            before[start + i] = v[k];
            squares += (double)v[k] * (double)v[k];
        }
    }
    squares = reduce_block(squares, 0.0);
    if (threadIdx.x == 0) {
        sums[chunk] = squares;
    }
}

// One chunk of the weights a block, after the update: Σw² and Σ(w − before)² into
// sums[2 * chunk] and sums[2 * chunk + 1].
extern "C" __global__ void __launch_bounds__(THREADS) change_chunks(
    const float *__restrict__ weights, const float *__restrict__ before,
    const long long *__restrict__ starts, const int *__restrict__ lens,
    double *__restrict__ sums) {
    const int chunk = blockIdx.x;
    const long long start = starts[chunk];
    const int len = lens[chunk];
    double after = 0.0, change = 0.0;
#pragma unroll
    for (int k = 0; k < PER_THREAD; k++) {
        const int i = k * THREADS + threadIdx.x;
        if (i < len) {
            const double w = (double)weights[start + i];
            const double d = w - (double)before[start + i];
            after += w * w;
            change += d * d;
        }
    }
    const double2 s = reduce_block(make_double2(after, change), make_double2(0.0, 0.0));
    if (threadIdx.x == 0) {
        sums[2 * chunk] = s.x;
        sums[2 * chunk + 1] = s.y;
    }
}

// One layer a block: the rows of `out`, [2, layers] in the order of `Statistic::WEIGHT`:
// ‖w‖ after the update, and ‖w − before‖ / ‖before‖ (NaN where ‖before‖ = 0).
extern "C" __global__ void __launch_bounds__(THREADS) weight_layers(
    const double *__restrict__ snapshot, const double *__restrict__ sums,
    const int *__restrict__ first, int layers, double *__restrict__ out) {
    const int layer = blockIdx.x;
    double before = 0.0, after = 0.0, change = 0.0;
    for (int c = first[layer] + threadIdx.x; c < first[layer + 1]; c += THREADS) {
        before += snapshot[c];
        after += sums[2 * c];
        change += sums[2 * c + 1];
    }
    const double2 s = reduce_block(make_double2(after, change), make_double2(0.0, 0.0));
    before = reduce_block(before, 0.0);
    if (threadIdx.x == 0) {
        out[layer] = sqrt(s.x);
        out[layers + layer] = before > 0.0 ? sqrt(s.y / before) : nan("");
    }
}
