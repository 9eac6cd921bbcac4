// micro.cc - the microbenchmarks, through the process's malloc
// (BM_x/system/...): glibc, or whatever is preloaded.  bench/compare runs
// it once per allocator, memalloc included (LD_PRELOAD), so that every
// allocator is measured the same way and none shares its process (and its
// break) with another.  Time is per operation (one malloc and its free, or
// one realloc step); footprint cases add peak_rss and final_rss counters:
// bytes of resident memory above the case's start.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

namespace {

struct System {
    static constexpr const char *name = "system";
    static void *malloc(size_t n) { return ::malloc(n); }
    static void free(void *p) { ::free(p); }
    static void *calloc(size_t m, size_t n) { return ::calloc(m, n); }
    static void *realloc(void *p, size_t n) { return ::realloc(p, n); }
    static int memalign(void **out, size_t a, size_t n) { return ::posix_memalign(out, a, n); }
};

// xorshift64*: fixed seeds, so both sides see the same sequence.
struct Rng {
    uint64_t s;
    explicit Rng(uint64_t seed) : s(seed * 2654435761u + 1) {}
    uint64_t next() {
        s ^= s >> 12; s ^= s << 25; s ^= s >> 27;
        return s * 2685821657736338717ull;
    }
    size_t below(size_t n) { return (size_t)(next() % n); }
};

// Log-uniform sizes in [lo, hi]: many small, some large, like real programs.
std::vector<size_t> mixed_sizes(size_t n, size_t lo, size_t hi, uint64_t seed) {
    Rng r(seed);
    std::vector<size_t> v(n);
    int lo_bit = 63 - __builtin_clzll(lo), hi_bit = 63 - __builtin_clzll(hi);
    for (auto &s : v) {
        size_t base = (size_t)1 << (lo_bit + r.below((size_t)(hi_bit - lo_bit + 1)));
        s = std::min(hi, std::max(lo, base + r.below(base)));
    }
    return v;
}

void fail(const char *what) {
    std::fprintf(stderr, "micro: %s returned NULL\n", what);
    std::abort();
}

// ---- resident memory -------------------------------------------------------

long status_kb(const char *key) {
    FILE *f = std::fopen("/proc/self/status", "r");
    if (!f) return 0;
    char line[256];
    long kb = 0;
    size_t klen = std::strlen(key);
    while (std::fgets(line, sizeof line, f))
        if (!std::strncmp(line, key, klen)) { kb = std::atol(line + klen); break; }
    std::fclose(f);
    return kb;
}

// Resets VmHWM to the current RSS (Linux >= 4.0); returns false if it can't.
bool reset_peak() {
    FILE *f = std::fopen("/proc/self/clear_refs", "w");
    if (!f) return false;
    bool ok = std::fputs("5", f) >= 0;
    return std::fclose(f) == 0 && ok;
}

struct Footprint {
    long base_kb;
    bool peak_ok;
    Footprint() : base_kb(0), peak_ok(reset_peak()) { base_kb = status_kb("VmRSS:"); }
    void report(benchmark::State &st) const {
        long rss = status_kb("VmRSS:");
        if (peak_ok)
            st.counters["peak_rss"] = benchmark::Counter(
                1024.0 * (double)std::max(0L, status_kb("VmHWM:") - base_kb),
                benchmark::Counter::kDefaults, benchmark::Counter::kIs1024);
        st.counters["final_rss"] = benchmark::Counter(
            1024.0 * (double)std::max(0L, rss - base_kb),
            benchmark::Counter::kDefaults, benchmark::Counter::kIs1024);
    }
};

void ops_per_iter(benchmark::State &st, double ops) {
    st.counters["ops_per_iter"] = benchmark::Counter(ops, benchmark::Counter::kAvgThreads);
    st.SetItemsProcessed((int64_t)(ops * (double)st.iterations()));
}

// ---- single-threaded cases ---------------------------------------------------

// One malloc, one write, one free.
template <class A> void BM_pair(benchmark::State &st) {
    size_t n = (size_t)st.range(0);
    for (auto _ : st) {
        char *p = (char *)A::malloc(n);
        if (!p) fail("malloc");
        p[0] = 1;
        benchmark::DoNotOptimize(p);
        A::free(p);
    }
    ops_per_iter(st, 1);
}

enum Order { FIFO, LIFO, SHUFFLED };

// Allocate N mixed sizes (16 B..1 KiB), then free them in order, in reverse
// or shuffled.
template <class A, Order O> void BM_batch(benchmark::State &st) {
    size_t n = (size_t)st.range(0);
    std::vector<size_t> sizes = mixed_sizes(n, 16, 1024, n);
    std::vector<size_t> order(n);
    for (size_t i = 0; i < n; i++) order[i] = O == LIFO ? n - 1 - i : i;
    if (O == SHUFFLED) {
        Rng r(7);
        for (size_t i = n - 1; i > 0; i--) std::swap(order[i], order[r.below(i + 1)]);
    }
    std::vector<char *> p(n);
    Footprint fp;
    for (auto _ : st) {
        for (size_t i = 0; i < n; i++) {
            p[i] = (char *)A::malloc(sizes[i]);
            if (!p[i]) fail("malloc");
            p[i][0] = (char)i;
        }
        benchmark::ClobberMemory();
        for (size_t i = 0; i < n; i++) A::free(p[order[i]]);
    }
    fp.report(st);
    ops_per_iter(st, (double)n);
}

template <class A> void BM_calloc(benchmark::State &st) {
    size_t n = (size_t)st.range(0);
    for (auto _ : st) {
        char *p = (char *)A::calloc(1, n);
        if (!p) fail("calloc");
        benchmark::DoNotOptimize(p[n / 2]);
        A::free(p);
    }
    ops_per_iter(st, 1);
}

// Two buffers growing by half again at each step, alternately (two vectors
// filling side by side), from 16 B to the final size; then both freed.
template <class A> void BM_realloc_chain(benchmark::State &st) {
    size_t final_size = (size_t)st.range(0);
    size_t steps = 0;
    Footprint fp;
    for (auto _ : st) {
        char *a = nullptr, *b = nullptr;
        steps = 0;
        for (size_t n = 16; n < final_size; n += n / 2) {
            size_t m = std::min(n + n / 2, final_size);
            a = (char *)A::realloc(a, m);
            b = (char *)A::realloc(b, m);
            if (!a || !b) fail("realloc");
            a[m - 1] = b[m - 1] = 1;
            steps += 2;
        }
        benchmark::ClobberMemory();
        A::free(a);
        A::free(b);
    }
    fp.report(st);
    ops_per_iter(st, (double)steps);
}

// posix_memalign of 512 bytes at the given alignment.
template <class A> void BM_aligned(benchmark::State &st) {
    size_t align = (size_t)st.range(0);
    for (auto _ : st) {
        void *p = nullptr;
        if (A::memalign(&p, align, 512) != 0) fail("posix_memalign");
        benchmark::DoNotOptimize(p);
        A::free(p);
    }
    ops_per_iter(st, 1);
}

// ---- multi-threaded cases ----------------------------------------------------

constexpr size_t kThreadBatch = 256;

// Every thread allocates and frees its own blocks (batches freed shuffled).
template <class A> void BM_threads_local(benchmark::State &st) {
    std::vector<size_t> sizes = mixed_sizes(kThreadBatch, 16, 1024, 11 + (uint64_t)st.thread_index());
    std::vector<size_t> order(kThreadBatch);
    Rng r(3 + (uint64_t)st.thread_index());
    for (size_t i = 0; i < kThreadBatch; i++) order[i] = i;
    for (size_t i = kThreadBatch - 1; i > 0; i--) std::swap(order[i], order[r.below(i + 1)]);
    std::vector<char *> p(kThreadBatch);
    for (auto _ : st) {
        for (size_t i = 0; i < kThreadBatch; i++) {
            p[i] = (char *)A::malloc(sizes[i]);
            if (!p[i]) fail("malloc");
            p[i][0] = 1;
        }
        benchmark::ClobberMemory();
        for (size_t i = 0; i < kThreadBatch; i++) A::free(p[order[i]]);
    }
    ops_per_iter(st, (double)kThreadBatch);
}

// Producer/consumer: each thread allocates a batch, hands it to the next
// thread's mailbox, and frees whatever was handed to it; so every block is
// freed by another thread (by itself when there is only one).
struct Mailbox {
    std::mutex m;
    std::vector<void *> items;
};
constexpr int kMaxThreads = 64;
Mailbox boxes[kMaxThreads];

template <class A> void drain_boxes(const benchmark::State &) {
    for (auto &b : boxes) {
        std::lock_guard<std::mutex> g(b.m);
        for (void *p : b.items) A::free(p);
        b.items.clear();
    }
}

template <class A> void BM_producer_consumer(benchmark::State &st) {
    int t = st.thread_index(), n = st.threads();
    std::vector<size_t> sizes = mixed_sizes(kThreadBatch, 16, 1024, 21 + (uint64_t)t);
    std::vector<void *> out, in;
    out.reserve(kThreadBatch);
    Mailbox &next = boxes[(t + 1) % n], &mine = boxes[t];
    for (auto _ : st) {
        for (size_t i = 0; i < kThreadBatch; i++) {
            char *p = (char *)A::malloc(sizes[i]);
            if (!p) fail("malloc");
            p[0] = 1;
            out.push_back(p);
        }
        {
            std::lock_guard<std::mutex> g(next.m);
            next.items.insert(next.items.end(), out.begin(), out.end());
        }
        out.clear();
        {
            std::lock_guard<std::mutex> g(mine.m);
            in.swap(mine.items);
        }
        for (void *p : in) A::free(p);
        in.clear();
    }
    ops_per_iter(st, (double)kThreadBatch);
}

// ---- registration ------------------------------------------------------------

template <class A> std::string nm(const char *bench) { return std::string(bench) + "/" + A::name; }

// Each case is registered for both sides, back to back, so the two run one
// after the other and see the same machine state.
template <class A> void register_side(int which) {
    switch (which) {
    case 0: {
        auto *b = benchmark::RegisterBenchmark(nm<A>("BM_pair").c_str(), BM_pair<A>);
        for (long s = 8; s <= (1L << 20); s *= 2) b->Arg(s);
        for (long s : {24L, 100L, 200L, 1000L, 3000L, 40000L, 300000L}) b->Arg(s);
        break;
    }
    case 1:
        benchmark::RegisterBenchmark(nm<A>("BM_batch_fifo").c_str(), BM_batch<A, FIFO>)
            ->Arg(1000)->Arg(100000);
        break;
    case 2:
        benchmark::RegisterBenchmark(nm<A>("BM_batch_lifo").c_str(), BM_batch<A, LIFO>)
            ->Arg(1000)->Arg(100000);
        break;
    case 3:
        benchmark::RegisterBenchmark(nm<A>("BM_batch_shuffled").c_str(), BM_batch<A, SHUFFLED>)
            ->Arg(1000)->Arg(100000);
        break;
    case 4:
        benchmark::RegisterBenchmark(nm<A>("BM_calloc").c_str(), BM_calloc<A>)
            ->Arg(16)->Arg(256)->Arg(4096)->Arg(65536)->Arg(1 << 20);
        break;
    case 5:
        benchmark::RegisterBenchmark(nm<A>("BM_realloc_chain").c_str(), BM_realloc_chain<A>)
            ->Arg(4096)->Arg(65536)->Arg(1 << 20);
        break;
    case 6:
        benchmark::RegisterBenchmark(nm<A>("BM_aligned").c_str(), BM_aligned<A>)
            ->Arg(64)->Arg(4096)->Arg(65536);
        break;
    case 7:
        benchmark::RegisterBenchmark(nm<A>("BM_threads_local").c_str(), BM_threads_local<A>)
            ->Threads(1)->Threads(2)->Threads(4)->Threads(8)->UseRealTime();
        break;
    case 8:
        benchmark::RegisterBenchmark(nm<A>("BM_producer_consumer").c_str(), BM_producer_consumer<A>)
            ->Threads(1)->Threads(2)->Threads(4)->Threads(8)->UseRealTime()
            ->Setup(drain_boxes<A>)->Teardown(drain_boxes<A>);
        break;
    }
}

}  // namespace

int main(int argc, char **argv) {
    for (int which = 0; which <= 8; which++)
        register_side<System>(which);
    const char *pre = std::getenv("LD_PRELOAD");
    benchmark::AddCustomContext("system_malloc", pre && *pre ? pre : "glibc");
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
}
