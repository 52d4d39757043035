// The statistics kernels of fused.cu run on the CPU, for the unit test that checks their
// arithmetic on a machine without a GPU (src/train/fused.rs, `kernels_on_the_cpu_...`).
//
// CUDA's execution model, emulated as far as the kernels use it: a block is THREADS
// operating-system threads, `__syncthreads` a barrier of the block, a warp shuffle an
// exchange through a per-warp slot array between two barriers of the warp, `__shared__`
// memory a static variable (blocks run one after another), atomics `std::atomic_ref`.
// Memory ordering and timing are the GPU's own and are not emulated: that is for the
// tests that run on a GPU.
//
// Usage: fused_emulated INPUT OUTPUT (the layouts are in `main`). The test compiles this
// file with the kernels' source, sizes defined, as "kernels.cu" beside it.

#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(threads)

struct Dim {
    unsigned int x;
};
thread_local Dim threadIdx;
thread_local Dim blockIdx;

struct double2 {
    double x, y;
};
inline double2 make_double2(double x, double y) { return double2{x, y}; }

inline unsigned int __float_as_uint(float f) {
    unsigned int u;
    std::memcpy(&u, &f, sizeof u);
    return u;
}
inline float __uint_as_float(unsigned int u) {
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
}

template <class T> inline T max(T a, T b) { return a < b ? b : a; }
template <class T> inline T min(T a, T b) { return b < a ? b : a; }

template <class T> inline T atomicAdd(T *address, T value) {
    return std::atomic_ref<T>(*address).fetch_add(value);
}

// The barrier of the running block, and one per warp with its exchange slots.
struct Warp {
    std::barrier<> barrier{32};
    alignas(16) unsigned char slots[32][16];
};
static std::barrier<> *block_barrier;
static Warp *warps_of_block;

inline void __syncthreads() { block_barrier->arrive_and_wait(); }

template <class T> T __shfl_down_sync(unsigned int, T value, int offset) {
    static_assert(sizeof(T) <= 16, "a slot holds 16 bytes");
    const int lane = threadIdx.x % 32;
    Warp &warp = warps_of_block[threadIdx.x / 32];
    std::memcpy(warp.slots[lane], &value, sizeof(T));
    warp.barrier.arrive_and_wait();
    const int source = lane + offset < 32 ? lane + offset : lane;
    T out;
    std::memcpy(&out, warp.slots[source], sizeof(T));
    warp.barrier.arrive_and_wait();
    return out;
}

#include "kernels.cu"

// Runs `kernel(args...)` on `grid` blocks of THREADS threads, one block after another.
template <class... Params, class... Args> void launch(void (*kernel)(Params...), int grid, Args... args) {
    for (int block = 0; block < grid; block++) {
        std::barrier<> barrier(THREADS);
        std::unique_ptr<Warp[]> warps(new Warp[THREADS / 32]);
        block_barrier = &barrier;
        warps_of_block = warps.get();
        std::vector<std::thread> threads;
        for (int t = 0; t < THREADS; t++) {
            threads.emplace_back([=] {
                threadIdx.x = t;
                blockIdx.x = block;
                kernel(args...);
            });
        }
        for (auto &thread : threads) {
            thread.join();
        }
    }
}

template <class T> std::vector<T> take(FILE *f, uint64_t n) {
    std::vector<T> v(n);
    if (n > 0 && std::fread(v.data(), sizeof(T), n, f) != n) {
        std::fprintf(stderr, "short input\n");
        std::exit(2);
    }
    return v;
}

template <class T> void put(FILE *f, const std::vector<T> &v) {
    std::fwrite(v.data(), sizeof(T), v.size(), f);
}

int main(int argc, char **argv) {
    if (argc != 3) {
        std::fprintf(stderr, "usage: %s INPUT OUTPUT\n", argv[0]);
        return 2;
    }
    // Input: u64 elements, layers, chunks; u32 below_bits; f32 grads, weights before and
    // after the update (elements each); the chunk table: i64 starts, i32 lens and
    // layer_of (chunks each), i32 first (layers + 1).
    FILE *in = std::fopen(argv[1], "rb");
    if (!in) {
        return 2;
    }
    const auto sizes = take<uint64_t>(in, 3);
    const uint64_t n = sizes[0], layers = sizes[1], chunks = sizes[2];
    const unsigned int below_bits = take<uint32_t>(in, 1)[0];
    auto grads = take<float>(in, n);
    auto weights = take<float>(in, n);
    const auto after = take<float>(in, n);
    const auto starts = take<long long>(in, chunks);
    const auto lens = take<int>(in, chunks);
    const auto layer_of = take<int>(in, chunks);
    const auto first = take<int>(in, layers + 1);
    std::fclose(in);

    std::vector<double> moments(3 * chunks), grad_rows(7 * layers);
    std::vector<unsigned int> counts(4 * chunks);
    launch(grad_chunks, (int)chunks, (const float *)grads.data(), starts.data(), lens.data(), below_bits,
           moments.data(), counts.data());
    launch(grad_layers, (int)layers, (const double *)moments.data(), (const unsigned int *)counts.data(),
           first.data(), (int)layers, grad_rows.data());

    std::vector<unsigned long long> hist(HIST_BINS * layers, 0);
    launch(hist_chunks, (int)chunks, (const float *)grads.data(), starts.data(), lens.data(), layer_of.data(),
           hist.data());

    // The snapshot starts as NaN: a read of an element it did not copy would show.
    std::vector<float> before(n, std::nanf(""));
    std::vector<double> snapshot(chunks), sums(2 * chunks), weight_rows(2 * layers);
    launch(snapshot_chunks, (int)chunks, (const float *)weights.data(), before.data(), starts.data(), lens.data(),
           snapshot.data());
    weights = after;
    launch(change_chunks, (int)chunks, (const float *)weights.data(), (const float *)before.data(), starts.data(),
           lens.data(), sums.data());
    launch(weight_layers, (int)layers, (const double *)snapshot.data(), (const double *)sums.data(), first.data(),
           (int)layers, weight_rows.data());

    // Output: f64 gradient rows (7 × layers), u64 histogram (layers × HIST_BINS), f64
    // weight rows (2 × layers).
    FILE *out = std::fopen(argv[2], "wb");
    if (!out) {
        return 2;
    }
    put(out, grad_rows);
    put(out, hist);
    put(out, weight_rows);
    std::fclose(out);
    return 0;
}
