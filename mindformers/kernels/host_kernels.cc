// Host (CPU) kernels for MindSpore's AOT custom operators (mindspore.ops.Custom, func_type="aot").
//
// Each kernel is `int name(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
// void *stream, void *extra)`: params holds the inputs, then the outputs. Tensors are contiguous and float32
// (labels int32); a kernel given another dtype returns an error code. The kernels replace chains of
// MindSpore's per-op CPU kernels, each of which reads and writes the whole tensor (AdamW over a
// 49,152 x 576 embedding: ~15 passes, 350 ms; here one pass).
// Built by mindformers/kernels/host.py; the generic MindSpore-ops path stays beside it and the tests compare
// the two.
#include <math.h>
#include <unistd.h>
#if defined(__F16C__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

extern "C" {
#pragma omp declare simd notinbranch
float expf(float);
}

namespace {

int64_t numel(int ndim, const int64_t *shape) {
  int64_t n = 1;
  for (int i = 0; i < ndim; ++i) n *= shape[i];
  return n;
}

bool all_float32(int count, const char **dtypes) {
  for (int i = 0; i < count; ++i)
    if (std::strcmp(dtypes[i], "float32") != 0) return false;
  return true;
}

// The threads a kernel may use: set by the Python side when it loads the library (host.threads(); importing
// MindSpore sets OMP_NUM_THREADS to 1 in the process's environment, so the library cannot read it there),
// else every CPU.
std::atomic<int> thread_count{0};

int threads() {
  const int n = thread_count.load(std::memory_order_relaxed);
  return n > 0 ? n : std::max(1, std::min(64, static_cast<int>(std::thread::hardware_concurrency())));
}

// max(x[0:n]), n >= 1, in vector lanes: as one chain of compares it waited on each compare's latency (~4
// cycles an element; the cross entropy of a [512, 49152] batch took 16 ms, 11 ms with the lanes).
float row_max(const float *x, int64_t n) {
  float top = x[0];
#pragma omp simd reduction(max : top)
  for (int64_t j = 1; j < n; ++j) top = x[j] > top ? x[j] : top;
  return top;
}

// out = exp(x - shift), returns their sum; expf is declared SIMD so that GCC calls glibc's vector expf
// (libmvec, < 4 ulp) 8 or 16 lanes at a time: the scalar expf made the softmax ~6x slower.
float exp_shifted(const float *x, float *out, int64_t n, float shift) {
  float total = 0;
#pragma omp simd reduction(+ : total)
  for (int64_t j = 0; j < n; ++j) {
    out[j] = expf(x[j] - shift);
    total += out[j];
  }
  return total;
}

// exp_shifted for rows with masked positions (an attention's bias at the most negative float): there glibc's
// vector expf takes a slow scalar path for every vector holding an argument below its range, ~10x slower (a
// causal training attention or a decode step's empty cache slots mask a large share). The arguments are
// clamped at -87 (expf: 1.6e-38) in a first pass, and the clamped positions give 0: in one loop GCC moves the
// call through the clamp's select (expf of the constant for the clamped lanes, of the raw argument for the
// others), so it would still see the out-of-range arguments. 2x slower than exp_shifted on rows without any.
// x may be out.
float exp_shifted_masked(const float *x, float *out, int64_t n, float shift) {
  constexpr float floor = -87.0f;
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) out[j] = x[j] - shift < floor ? floor : x[j] - shift;
  float total = 0;
#pragma omp simd reduction(+ : total)
  for (int64_t j = 0; j < n; ++j) {
    out[j] = out[j] <= floor ? 0.0f : expf(out[j]);
    total += out[j];
  }
  return total;
}


// A second thread for the small, frequent calls of the kernels (lora_delta's 210 per decode step, the
// ~1,100 elementwise and optimizer calls of a training step through parallel_for): started once and parked
// between calls, so a call costs a wake-up (a few us) where starting a std::thread costs ~20. Both threads take
// chunks of work from a shared counter, so a helper the OS runs late (the other core busy: MindSpore's own
// threads, another process) costs the call only that wake-up: the caller takes the remaining chunks and waits
// only for a chunk the helper has claimed.
class Helper {
 public:
  // body(first, last) over [0, n) in chunks of `chunk`, on the calling thread and the helper.
  void run(int64_t n, int64_t chunk, const std::function<void(int64_t, int64_t)> &body) {
    Job job{&body, n, chunk};
    std::lock_guard<std::mutex> one_call(calls_);  // MindSpore may launch kernels from several threads
    {
      std::lock_guard<std::mutex> lock(mu_);
      job_ = &job;
      ++generation_;
    }
    wake_.notify_one();
    drain(job);
    std::unique_lock<std::mutex> lock(mu_);
    job_ = nullptr;  // a helper that wakes from now on finds no job
    done_.wait(lock, [&] { return !busy_; });
  }

  // The process's helper; never destroyed (its detached thread waits on it until the process exits). A child
  // process (fork) has no thread behind its copy, and maybe a copy of a locked mutex: it starts its own.
  static Helper &get() {
    static std::atomic<Helper *> helper{nullptr};
    static std::atomic<pid_t> owner{0};
    static std::mutex creating;
    const pid_t pid = getpid();
    if (owner.load() != pid) {
      std::lock_guard<std::mutex> lock(creating);
      if (owner.load() != pid) {
        helper.store(new Helper);
        owner.store(pid);
      }
    }
    return *helper.load();
  }

 private:
  struct Job {
    const std::function<void(int64_t, int64_t)> *body;
    int64_t n, chunk;
    std::atomic<int64_t> next{0};
  };

  Helper() { std::thread([this] { loop(); }).detach(); }

  static void drain(Job &job) {
    for (int64_t first; (first = job.next.fetch_add(job.chunk)) < job.n;)
      (*job.body)(first, std::min(first + job.chunk, job.n));
  }

  void loop() {
    uint64_t seen = 0;
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      wake_.wait(lock, [&] { return generation_ != seen; });
      seen = generation_;
      Job *job = job_;
      if (job == nullptr) continue;  // the call finished before this thread ran
      busy_ = true;
      lock.unlock();
      drain(*job);
      lock.lock();
      busy_ = false;
      done_.notify_one();
    }
  }

  std::mutex calls_, mu_;
  std::condition_variable wake_, done_;
  Job *job_ = nullptr;  // the running call's, guarded by mu_ (as are the two below)
  uint64_t generation_ = 0;
  bool busy_ = false;  // the helper is inside job_
};

// How many parts parallel_for splits n elements into (each at least min_per_thread long): one per thread, or
// on two threads up to 8, which the caller and the helper take from a shared counter. Size per-part partial
// sums by it.
int parallel_parts(int64_t n, int64_t min_per_thread = 1 << 15) {
  const int most = threads() == 2 ? 8 : threads();
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(most, n / min_per_thread)));
}

// Runs body(part, begin, end) over [0, n) split into parallel_parts(n, min_per_thread) contiguous parts; part
// indexes a per-part partial sum. Small tensors stay on the calling thread. On two threads the parts go to the
// caller and the parked helper (Helper below), so a call costs no thread start: starting and joining a
// std::thread per call cost ~45 us, more than the whole of many calls (a squared_sum of 110K floats: 31 us
// on one thread, 65 us on two; a training step makes ~1,100 such calls). Otherwise one std::thread per part.
template <typename Body>
void parallel_for(int64_t n, Body body, int64_t min_per_thread = 1 << 15) {
  const int parts = parallel_parts(n, min_per_thread);
  if (parts <= 1) {
    body(0, 0, n);
    return;
  }
  const int64_t chunk = (n + parts - 1) / parts;
  auto part = [&](int64_t first, int64_t last) {
    for (int64_t w = first; w < last; ++w) body(static_cast<int>(w), w * chunk, std::min(n, (w + 1) * chunk));
  };
  if (threads() == 2) {
    Helper::get().run(parts, 1, part);
    return;
  }
  std::vector<std::thread> pool;
  for (int w = 1; w < parts; ++w) pool.emplace_back(part, w, w + 1);
  part(0, 1);
  for (auto &t : pool) t.join();
}

// Vectors for the LoRA kernel, as GCC vector extensions (no intrinsics: any x86-64 or aarch64 g++ compiles
// them; -march=native picks the instructions): 16 floats where AVX-512 has 32 such registers, 8 with AVX,
// else 4 (SSE, NEON).
#if defined(__AVX512F__)
constexpr int VW = 16;
#elif defined(__AVX__)
constexpr int VW = 8;
#else
constexpr int VW = 4;
#endif
typedef float vfloat __attribute__((vector_size(VW * sizeof(float))));
typedef float vfloat4 __attribute__((vector_size(4 * sizeof(float))));
typedef double vdouble __attribute__((vector_size(VW * sizeof(double))));

inline vfloat vload(const float *p) {  // unaligned
  vfloat v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

inline void vstore(float *p, vfloat v) { std::memcpy(p, &v, sizeof v); }

// IEEE binary16 as numpy's float16 stores it: the serving pool's factors may be kept in it (half the bytes
// a decode step reads); they are widened to float32 as they are loaded, the arithmetic stays float32.
struct half_t { uint16_t bits; };

inline float to_float(float v) { return v; }

inline float to_float(half_t h) {
#if defined(__F16C__) || defined(__AVX512F__)
  return _cvtsh_ss(h.bits);
#else
  const uint32_t sign = (h.bits & 0x8000u) << 16, exp = (h.bits >> 10) & 0x1f, man = h.bits & 0x3ffu;
  uint32_t bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (man << 13);  // inf, nan
  } else if (exp != 0) {
    bits = sign | ((exp + 112) << 23) | (man << 13);  // normal: rebias 15 -> 127
  } else if (man == 0) {
    bits = sign;  // zero
  } else {  // subnormal: man * 2^-24
    float value = std::ldexp(static_cast<float>(man), -24);
    std::memcpy(&bits, &value, sizeof bits);
    bits |= sign;
  }
  float out;
  std::memcpy(&out, &bits, sizeof out);
  return out;
#endif
}

inline vfloat vload(const half_t *p) {  // unaligned, widened
#if defined(__AVX512F__)
  return (vfloat)_mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i *>(p)));
#elif defined(__F16C__) && defined(__AVX__)
  return (vfloat)_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i *>(p)));
#else
  vfloat v;
  for (int k = 0; k < VW; ++k) v[k] = to_float(p[k]);
  return v;
#endif
}

inline float hsum(vfloat v) {  // a tree of halves: lane by lane would be VW dependent adds
  vfloat4 part[VW / 4], total;
  std::memcpy(part, &v, sizeof v);
  total = part[0];
  for (int q = 1; q < VW / 4; ++q) total += part[q];
  return (total[0] + total[2]) + (total[1] + total[3]);
}

// v, loaded into a register once: otherwise GCC folds each use's load into its multiply-add (a memory
// operand), and a register block's loop reloads every vector once per row of the block (linear_dots: each
// vector of w TB times; lora_tile: each of bt's once per token): bound by loads, not by arithmetic.
inline vfloat in_register(vfloat v) {
  asm("" : "+x"(v));
  return v;
}

// The LoRA kernel takes the tokens of one adapter in blocks of up to TOKENS (each factor read once per
// block). The second product works in the pool's column blocks of 32 (COLUMNS below): tiles of OUT_VECTORS
// vectors by the block's tokens.
//
// `ahead` (the loops below): the next block's factor when it is another slot's, else nullptr. As a loop
// reads its factor it prefetches the same offsets of `ahead` into L2, so the next block's factors arrive
// while this block computes. A block reads a few tens of KB (rank 8: A 18 KB, B^T 49 KB on SmolLM2's gate),
// too short for the hardware prefetcher to reach the memory's speed before it ends: SmolLM2's 210 layers at
// 32 rows read 12 GB/s of factors on one core (32 adapters of rank 8, a block per token) without it,
// 16.5 with it.
constexpr int TOKENS = 4, OUT_VECTORS = 2;

// out[t, :NV * VW] = h[t, :rank] . bt[:rank, :NV * VW] for t < TB: the tile stays in registers over the
// ranks and is stored once (written, not added: a block's rows get their products from zeros, so nothing
// has to clear them first). h [TB, rank], bt [rank, out_n], out: TB rows.
template <int TB, int NV, typename T>
void lora_tile(const float *h, int64_t rank, const T *bt, int64_t out_n, float *const *out, int64_t o,
               const T *ahead) {
  vfloat acc[TB][NV] = {};
  for (int64_t j = 0; j < rank; ++j) {
    vfloat b[NV];
    for (int v = 0; v < NV; ++v) b[v] = in_register(vload(bt + j * out_n + o + v * VW));
    if (ahead != nullptr)
      for (int v = 0; v < NV; ++v) __builtin_prefetch(ahead + j * out_n + o + v * VW, 0, 2);
    for (int t = 0; t < TB; ++t) {
      const float hj = h[t * rank + j];
      for (int v = 0; v < NV; ++v) acc[t][v] += hj * b[v];
    }
  }
  for (int t = 0; t < TB; ++t)
    for (int v = 0; v < NV; ++v) vstore(out[t] + o + v * VW, acc[t][v]);
}

// out [o0:o1] = h [rank] . bt [rank, o0:o1] for a block of one token, whose adapter is read once and from
// memory when each row has its own: bt is streamed 4 rows at a time, front to back (tiles across its rows, as
// lora_tile reads them, were ~1.4x slower there: too many streams for the prefetcher). The first 4 rows (or
// fewer) write out, the others add to it: the sums of lora_tile's order, from zeros.
template <typename T>
void lora_row(const float *h, int64_t rank, const T *bt, int64_t out_n, float *out, int64_t o0, int64_t o1,
              const T *ahead) {
  int64_t j = 0;
  for (; j + 4 <= rank; j += 4) {
    const float h0 = h[j], h1 = h[j + 1], h2 = h[j + 2], h3 = h[j + 3];
    const T *b0 = bt + j * out_n, *b1 = b0 + out_n, *b2 = b1 + out_n, *b3 = b2 + out_n;
    const bool first = j == 0;
    int64_t o = o0;
    for (; o + VW <= o1; o += VW) {
      if (ahead != nullptr)
        for (int q = 0; q < 4; ++q) __builtin_prefetch(ahead + (j + q) * out_n + o, 0, 2);
      vstore(out + o, (first ? vfloat{} : vload(out + o)) + ((h0 * vload(b0 + o) + h1 * vload(b1 + o)) +
                                                             (h2 * vload(b2 + o) + h3 * vload(b3 + o))));
    }
    for (; o < o1; ++o)
      out[o] = (first ? 0.0f : out[o]) +
               ((h0 * to_float(b0[o]) + h1 * to_float(b1[o])) + (h2 * to_float(b2[o]) + h3 * to_float(b3[o])));
  }
  for (; j < rank; ++j) {
    const float hj = h[j];
    const T *bj = bt + j * out_n;
    const bool first = j == 0;
    int64_t o = o0;
    for (; o + VW <= o1; o += VW) vstore(out + o, (first ? vfloat{} : vload(out + o)) + hj * vload(bj + o));
    for (; o < o1; ++o) out[o] = (first ? 0.0f : out[o]) + hj * to_float(bj[o]);
  }
}

// h[t * rank + r] = x[t] . a[r] for t < TB, r < rank (the first product of a block of TB tokens): a's rows
// one after the other, so that the slot's factor is read front to back as one stream, with two accumulators
// a token (x's TB rows stay in L1). Blocks of 4 rows read side by side (4 streams of a few KB each) ran at
// about a third of the bandwidth a plain sum gets from the same memory on one core, one stream at ~60% of it.
template <int TB, typename T>
void lora_hidden(const float *const *x, const T *a, int64_t rank, int64_t in, float *h, const T *ahead) {
  for (int64_t r = 0; r < rank; ++r) {
    const T *row = a + r * in;
    vfloat acc[TB][2] = {};
    int64_t i = 0;
    for (; i + 2 * VW <= in; i += 2 * VW) {
      const vfloat a0 = vload(row + i), a1 = vload(row + i + VW);
      if (ahead != nullptr) {
        __builtin_prefetch(ahead + r * in + i, 0, 2);
        __builtin_prefetch(ahead + r * in + i + VW, 0, 2);
      }
      for (int t = 0; t < TB; ++t) {
        acc[t][0] += vload(x[t] + i) * a0;
        acc[t][1] += vload(x[t] + i + VW) * a1;
      }
    }
    for (; i + VW <= in; i += VW) {
      const vfloat a0 = vload(row + i);
      for (int t = 0; t < TB; ++t) acc[t][0] += vload(x[t] + i) * a0;
    }
    for (int t = 0; t < TB; ++t) {
      float sum = hsum(acc[t][0] + acc[t][1]);
      for (int64_t k = i; k < in; ++k) sum += x[t][k] * to_float(row[k]);
      h[t * rank + r] = sum;
    }
  }
}

// out[t, o0:o1] = h[t, :rank] . bt[:rank, o0:o1] for t < TB (the second product over a range of columns):
// register tiles of NV vectors, then single vectors, then the columns left.
template <int TB, typename T>
void lora_columns(const float *h, int64_t rank, const T *bt, int64_t out_n, float *const *out, int64_t o0,
                  int64_t o1, const T *ahead) {
  constexpr int NV = OUT_VECTORS;
  int64_t o = o0;
  for (; o + NV * VW <= o1; o += NV * VW) lora_tile<TB, NV, T>(h, rank, bt, out_n, out, o, ahead);
  for (; o + VW <= o1; o += VW) lora_tile<TB, 1, T>(h, rank, bt, out_n, out, o, ahead);
  for (int t = 0; t < TB; ++t)
    for (int64_t k = o; k < o1; ++k) {
      float sum = 0;
      for (int64_t r = 0; r < rank; ++r) sum += h[t * rank + r] * to_float(bt[r * out_n + k]);
      out[t][k] = sum;
    }
}


// Blocks of up to TOKENS tokens of one slot, wherever its rows are in the batch (the engine's rows are in
// request order): an adapter's factors are read once per block. `rows` rows of `per_row` tokens; row r's
// slot is row_slots[r]; rows without an adapter (a negative slot, one past the pool, or rank 0) are in none.
struct LoraBlock { int64_t slot, rank, count, token[TOKENS]; };

std::vector<LoraBlock> lora_blocks(int64_t rows, int64_t per_row, const int32_t *row_slots, const int32_t *ranks,
                                   int64_t slots, int64_t max_rank) {
  auto rank_of = [&](int64_t slot) { return slot >= 0 && slot < slots ? std::min<int64_t>(ranks[slot], max_rank) : 0; };
  std::vector<int64_t> order;  // the rows with an adapter, by slot, in batch order within a slot
  for (int64_t r = 0; r < rows; ++r)
    if (rank_of(row_slots[r]) > 0) order.push_back(r);
  std::stable_sort(order.begin(), order.end(), [&](int64_t p, int64_t q) { return row_slots[p] < row_slots[q]; });
  std::vector<LoraBlock> blocks;
  for (size_t g = 0; g < order.size();) {
    const int64_t slot = row_slots[order[g]];
    size_t next = g + 1;
    while (next < order.size() && row_slots[order[next]] == slot) ++next;
    LoraBlock blk{slot, rank_of(slot), 0, {}};
    for (size_t k = g; k < next; ++k)
      for (int64_t t = order[k] * per_row; t < (order[k] + 1) * per_row; ++t) {
        blk.token[blk.count++] = t;
        if (blk.count == TOKENS) {
          blocks.push_back(blk);
          blk.count = 0;
        }
      }
    if (blk.count > 0) blocks.push_back(blk);
    g = next;
  }
  return blocks;
}

// A block of `count` tokens of one adapter (factors of type T): its first product into h [count, rank], and
// its second product over columns [o0, o1) written to its rows of out (one token: lora_row); ahead: the
// next block's factor (its a, or its bt at these columns) or nullptr.
template <typename T>
void lora_block_hidden(const float *const *xs, const T *a, int64_t count, int64_t rank, int64_t in, float *h,
                       const T *ahead) {
  switch (count) {
    case 4: lora_hidden<4>(xs, a, rank, in, h, ahead); break;
    case 3: lora_hidden<3>(xs, a, rank, in, h, ahead); break;
    case 2: lora_hidden<2>(xs, a, rank, in, h, ahead); break;
    default: lora_hidden<1>(xs, a, rank, in, h, ahead);
  }
}

template <typename T>
void lora_block_columns(const float *h, int64_t count, int64_t rank, const T *bt, int64_t out_n, float *const *os,
                        int64_t o0, int64_t o1, const T *ahead) {
  switch (count) {
    case 4: lora_columns<4>(h, rank, bt, out_n, os, o0, o1, ahead); break;
    case 3: lora_columns<3>(h, rank, bt, out_n, os, o0, o1, ahead); break;
    case 2: lora_columns<2>(h, rank, bt, out_n, os, o0, o1, ahead); break;
    default: lora_row(h, rank, bt, out_n, os[0], o0, o1, ahead);
  }
}

// The pool's bt in column blocks at the slot's own rank (host.pack_columns writes it): of a slot's
// [max_rank, out], the first `rank` rows as blocks of COLUMNS columns, block c (columns [o0, o0 + width),
// o0 = c * COLUMNS, width = min(COLUMNS, out - o0)) at offset o0 * rank as [rank][width]; the rows past the
// rank after them. A block's second product, a tile of columns after the other, then reads the slot's
// rank * out factors front to back as one stream, whatever max_rank is, instead of rank pieces `out` apart
// (or, blocked at max_rank, rank * width pieces max_rank * width apart: a rank-8 adapter in a rank-64 pool
// read 1 KB of every 8): too many streams for the hardware prefetcher.
constexpr int64_t COLUMNS = 32;

// out[t] = h[t, :rank] . bt[:rank, :out_n] for t < count over a slot's column-blocked bt (slot_bt: the slot's
// first element), block by block; os: the block's rows of out; ahead: the next block's slot_bt or nullptr.
template <typename T>
void lora_block_all_columns(const float *h, int64_t count, int64_t rank, const T *slot_bt, float *const *os,
                            int64_t out_n, const T *ahead) {
  float *shifted[TOKENS];
  for (int64_t o0 = 0; o0 < out_n; o0 += COLUMNS) {
    const int64_t width = std::min(COLUMNS, out_n - o0);
    for (int64_t t = 0; t < count; ++t) shifted[t] = os[t] + o0;
    lora_block_columns(h, count, rank, slot_bt + o0 * rank, width, shifted, 0, width,
                       ahead == nullptr ? nullptr : ahead + o0 * rank);
  }
}

// A block's products written to its tokens' rows of the output (os), from zeros: h = x a^T into
// h [count, rank], then os = h bt. a, bt: the pool (a [slots, max_rank, in], bt column-blocked
// [slots, max_rank, out_n]) of T. next: the block after it (or nullptr), whose factors are prefetched as
// this block's are read when they are another slot's.
template <typename T>
void lora_block_products(const LoraBlock &blk, const LoraBlock *next, const float *x, const void *a,
                         const void *bt, int64_t in, int64_t out_n, int64_t max_rank, float *const *os, float *h) {
  const T *slot_a = static_cast<const T *>(a), *slot_bt = static_cast<const T *>(bt);
  const bool ahead = next != nullptr && next->slot != blk.slot;
  const float *xs[TOKENS];
  for (int64_t t = 0; t < blk.count; ++t) xs[t] = x + blk.token[t] * in;
  lora_block_hidden(xs, slot_a + blk.slot * max_rank * in, blk.count, blk.rank, in, h,
                    ahead ? slot_a + next->slot * max_rank * in : nullptr);
  lora_block_all_columns(h, blk.count, blk.rank, slot_bt + blk.slot * max_rank * out_n, os, out_n,
                         ahead ? slot_bt + next->slot * max_rank * out_n : nullptr);
}

// The linear layer of a decode step, y = x w^T, for a few rows x [m, k] against w [n, k] (the
// [out, in] weight as stored): dot products along k, a block of TB rows by NB weight rows at a time, whose
// TB x NB accumulators stay in registers over k (each loaded vector of w serves TB rows, each of x NB
// weight rows). The weight rows of a block are read from memory once and from L1 by the row blocks after
// the first; x (m rows) stays in L2. MindSpore's MatMul packs w for every call, which costs a decode step
// (a few rows against every weight of the model) about twice what this loop does.
template <int TB, int NB, bool FETCH>
void linear_dots(const float *const *x, const float *w, int64_t k, float *const *y, int64_t n0) {
  vfloat acc[TB][NB] = {};
  int64_t i = 0;
  for (; i + VW <= k; i += VW) {
    if (FETCH)
      for (int j = 0; j < NB; ++j) __builtin_prefetch(w + (NB + j) * k + i);
    vfloat xv[TB], wv[NB];
    for (int t = 0; t < TB; ++t) xv[t] = in_register(vload(x[t] + i));
    for (int j = 0; j < NB; ++j) wv[j] = in_register(vload(w + j * k + i));
    for (int t = 0; t < TB; ++t)
      for (int j = 0; j < NB; ++j) acc[t][j] += xv[t] * wv[j];
  }
  for (int t = 0; t < TB; ++t)
    for (int j = 0; j < NB; ++j) {
      float sum = hsum(acc[t][j]);
      for (int64_t q = i; q < k; ++q) sum += x[t][q] * w[j * k + q];
      y[t][n0 + j] = sum;
    }
}

constexpr int LINEAR_ROWS = 4;  // rows of x a block of linear_rows takes

// Rows [first, last) of w (a multiple of NB but the tail) for every row of x, TB rows at a time.
template <int NB>
void linear_rows(const float *x, const float *w, float *y, int64_t m, int64_t k, int64_t n,
                 int64_t first, int64_t last) {
  constexpr int TB = LINEAR_ROWS;
  const float *xs[TB];
  float *ys[TB];
  for (int64_t j = first; j < last;) {
    const bool whole = j + NB <= last;
    for (int64_t t0 = 0; t0 < m; t0 += TB) {
      const int64_t count = std::min<int64_t>(TB, m - t0);
      for (int64_t t = 0; t < count; ++t) {
        xs[t] = x + (t0 + t) * k;
        ys[t] = y + (t0 + t) * n;
      }
      if (whole && t0 == 0 && j + 2 * NB <= last) {
        switch (count) {
          case 4: linear_dots<4, NB, true>(xs, w + j * k, k, ys, j); break;
          case 3: linear_dots<3, NB, true>(xs, w + j * k, k, ys, j); break;
          case 2: linear_dots<2, NB, true>(xs, w + j * k, k, ys, j); break;
          default: linear_dots<1, NB, true>(xs, w + j * k, k, ys, j);
        }
      } else if (whole) {
        switch (count) {
          case 4: linear_dots<4, NB, false>(xs, w + j * k, k, ys, j); break;
          case 3: linear_dots<3, NB, false>(xs, w + j * k, k, ys, j); break;
          case 2: linear_dots<2, NB, false>(xs, w + j * k, k, ys, j); break;
          default: linear_dots<1, NB, false>(xs, w + j * k, k, ys, j);
        }
      } else {
        for (int64_t t = 0; t < count; ++t) linear_dots<1, 1, false>(xs + t, w + j * k, k, ys + t, j);
      }
    }
    j += whole ? NB : 1;
  }
}

// silu(g) = g * sig(g) with sig(g) = 1 / (1 + exp(-g)); exp(-g) overflows to inf for g < -88, where sig is 0.
inline float sigmoid(float g) { return 1.0f / (1.0f + expf(-g)); }

// The rotation of rows of `dim` numbers in the "rotate half" layout (x = [x1, x2], R(x) = [-x2, x1]):
// forward y = x cos + R(x) sin; its gradient (grad) dx = dy cos + R^T(dy sin) with R^T(w) = [w2, -w1].
// x: rows of [batch, heads, seq] order; cos/sin: [cos_batch, 1, seq, dim], cos_batch 1 or batch.
template <bool grad>
void rotary_rows(const float *x, const float *cos, const float *sin, float *y, int64_t heads, int64_t seq,
                 int64_t dim, bool per_row_table, int64_t begin, int64_t end) {
  const int64_t half = dim / 2;
  for (int64_t r = begin; r < end; ++r) {
    const int64_t b = r / (heads * seq), s = r % seq;
    const int64_t table = ((per_row_table ? b : 0) * seq + s) * dim;
    const float *c = cos + table, *n = sin + table, *a = x + r * dim;
    float *out = y + r * dim;
#pragma omp simd
    for (int64_t j = 0; j < half; ++j) {
      const float a1 = a[j], a2 = a[j + half];
      if (grad) {
        out[j] = a1 * c[j] + a2 * n[j + half];
        out[j + half] = a2 * c[j + half] - a1 * n[j];
      } else {
        out[j] = a1 * c[j] - a2 * n[j];
        out[j + half] = a2 * c[j + half] + a1 * n[j + half];
      }
    }
  }
}

// inputs: x [batch, heads, seq, dim], cos, sin [batch or 1, 1, seq, dim] (dim even); output [batch, heads,
// seq, dim].
template <bool grad>
int rotary_kernel(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes) {
  if (nparam != 4 || ndims[0] != 4 || ndims[1] != 4 || ndims[2] != 4) return 1;
  if (!all_float32(nparam, dtypes)) return 3;
  const int64_t *xs = shapes[0], *cs = shapes[1], *ss = shapes[2];
  const int64_t batch = xs[0], heads = xs[1], seq = xs[2], dim = xs[3];
  for (int i = 0; i < 4; ++i)
    if (cs[i] != ss[i]) return 2;
  if ((cs[0] != 1 && cs[0] != batch) || cs[1] != 1 || cs[2] != seq || cs[3] != dim || dim % 2 != 0) return 2;
  const float *x = static_cast<const float *>(params[0]);
  const float *cos = static_cast<const float *>(params[1]);
  const float *sin = static_cast<const float *>(params[2]);
  float *y = static_cast<float *>(params[3]);
  const bool per_row_table = cs[0] != 1;
  const int64_t rows = batch * heads * seq;
  parallel_for(rows, [=](int, int64_t begin, int64_t end) {
    rotary_rows<grad>(x, cos, sin, y, heads, seq, dim, per_row_table, begin, end);
  }, std::max<int64_t>(1, (int64_t(1) << 15) / std::max<int64_t>(dim, 1)));
  return 0;
}

}  // namespace

extern "C" {

// host.py calls these through ctypes when it loads the library (the kernels read threads()).
void set_threads(int n) { thread_count.store(std::max(1, std::min(64, n)), std::memory_order_relaxed); }

int get_threads() { return threads(); }

// AdamW step on one parameter, in place (torch.optim.AdamW's update, as mindformers/trainer/optim.py's
// generic path computes it, operation for operation):
//   g = grad * scalars[7]
//   m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
//   p = p - lr * ((m / c1) / (sqrt(v) / c2_sqrt + eps) + decay * p)
// inputs: param, grad, exp_avg, exp_avg_sq (same shape), scalars[8] = {lr, b1, b2, eps, c1, c2_sqrt, decay,
// grad_scale}; output: a [1] tensor set to 1 (the graph's handle on the side effect).
int adamw_update(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *, void *) {
  if (nparam != 6) return 1;
  if (!all_float32(nparam, dtypes)) return 3;
  float *p = static_cast<float *>(params[0]);
  const float *g = static_cast<const float *>(params[1]);
  float *m = static_cast<float *>(params[2]);
  float *v = static_cast<float *>(params[3]);
  const float *s = static_cast<const float *>(params[4]);
  const int64_t n = numel(ndims[0], shapes[0]);
  if (numel(ndims[1], shapes[1]) != n || numel(ndims[2], shapes[2]) != n || numel(ndims[3], shapes[3]) != n ||
      numel(ndims[4], shapes[4]) != 8)
    return 2;
  const float lr = s[0], b1 = s[1], b2 = s[2], eps = s[3], c1 = s[4], c2 = s[5], decay = s[6], scale = s[7];
  const float one_b1 = 1.0f - b1, one_b2 = 1.0f - b2;
  parallel_for(n, [=](int, int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const float gi = g[i] * scale;
      const float mi = b1 * m[i] + one_b1 * gi;
      const float vi = b2 * v[i] + one_b2 * (gi * gi);
      m[i] = mi;
      v[i] = vi;
      float update = (mi / c1) / (std::sqrt(vi) / c2 + eps);
      if (decay > 0.0f) update = update + decay * p[i];
      p[i] = p[i] - lr * update;
    }
  }, 1 << 16);  // parts of ~30 us on a core
  static_cast<float *>(params[5])[0] = 1.0f;
  return 0;
}

// Sum of squares of a tensor, accumulated in double: one read of the tensor (MindSpore's Square then
// ReduceSum to a scalar took 136 ms on 28M values here).
// input: x; output: a [1] float32 tensor.
int squared_sum(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *, void *) {
  if (nparam != 2) return 1;
  if (!all_float32(nparam, dtypes)) return 3;
  const float *x = static_cast<const float *>(params[0]);
  const int64_t n = numel(ndims[0], shapes[0]);
  constexpr int64_t min_part = 1 << 17;  // ~20 us on a core: shorter parts cost more to hand over than they save
  std::vector<double> partial(parallel_parts(n, min_part), 0.0);
  parallel_for(n, [&](int w, int64_t begin, int64_t end) {
    // in double lanes, two vectors' worth of chains (four scalar chains ran at 14 GB/s on a core, and GCC
    // keeps an omp simd reduction over doubles in one in-order chain); a float's square is exact in double
    vdouble a0 = {}, a1 = {};
    int64_t i = begin;
    for (; i + 2 * VW <= end; i += 2 * VW) {
      const vdouble v0 = __builtin_convertvector(vload(x + i), vdouble);
      const vdouble v1 = __builtin_convertvector(vload(x + i + VW), vdouble);
      a0 += v0 * v0;
      a1 += v1 * v1;
    }
    double acc = 0;
    for (int l = 0; l < VW; ++l) acc += a0[l] + a1[l];
    for (; i < end; ++i) acc += double(x[i]) * x[i];
    partial[w] = acc;
  }, min_part);
  double total = 0;
  for (double part : partial) total += part;
  static_cast<float *>(params[1])[0] = static_cast<float>(total);
  return 0;
}

// Softmax cross entropy of logits rows against labels, with its gradient (what Liger Kernel's fused
// linear cross entropy computes per chunk): loss_sum = sum over rows with label >= 0 of
// logsumexp(row) - row[label]; grad = scale * (softmax(row) - onehot(label)), zero on ignored rows.
// inputs: logits [rows, vocab] float32, labels [rows] int32 (negative: ignored), scale [1] float32;
// outputs: loss_sum [1] float32, grad [rows, vocab] float32; with no grad output (4 params) the gradient
// is written over the logits (softmax_cross_entropy_ in host.py: one [rows, vocab] buffer, not two).
int softmax_cross_entropy(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *,
                          void *) {
  if ((nparam != 5 && nparam != 4) || ndims[0] != 2) return 1;
  if (!all_float32(1, dtypes) || std::strcmp(dtypes[1], "int32") != 0 || !all_float32(nparam - 2, dtypes + 2))
    return 3;
  const float *logits = static_cast<const float *>(params[0]);
  const int32_t *labels = static_cast<const int32_t *>(params[1]);
  const float scale = static_cast<const float *>(params[2])[0];
  float *grad = static_cast<float *>(params[nparam == 5 ? 4 : 0]);
  const int64_t rows = shapes[0][0], vocab = shapes[0][1];
  if (numel(ndims[1], shapes[1]) != rows) return 2;
  std::vector<double> partial(parallel_parts(rows * vocab), 0.0);
  // parallel over rows: split [0, rows * vocab) on row boundaries
  parallel_for(rows * vocab, [&](int w, int64_t begin, int64_t end) {
    double loss = 0;
    for (int64_t r = (begin + vocab - 1) / vocab; r < rows && r * vocab < end; ++r) {
      const float *x = logits + r * vocab;
      float *g = grad + r * vocab;
      const int32_t label = labels[r];
      if (label < 0 || label >= vocab) {
        std::memset(g, 0, sizeof(float) * vocab);
        continue;
      }
      const float top = row_max(x, vocab), picked = x[label];  // read before g (maybe x itself) is written
      const float total = exp_shifted(x, g, vocab, top);  // g = exp(x - top)
      const float factor = scale / total;
      for (int64_t j = 0; j < vocab; ++j) g[j] *= factor;
      g[label] -= scale;
      loss += double(top) + std::log(double(total)) - double(picked);
    }
    partial[w] = loss;
  });
  double total = 0;
  for (double part : partial) total += part;
  static_cast<float *>(params[3])[0] = static_cast<float>(total);
  return 0;
}

// RMSNorm (Zhang & Sennrich 2019) over the last axis and its gradient. MindSpore builds it from ~5 elementwise
// ops forward and ~10 backward, each a kernel that keeps buffers the size of its tensor for the graph's life
// (measured: ~50 MB per norm of a [1024, 576] batch in a training step); here one pass each way.
// rms_norm inputs: x [rows, dim], w [dim], eps [1]; outputs: y = w * (x * r) [rows, dim], r [rows] with
// r = 1 / sqrt(mean(x^2) + eps) (what the gradient needs).
int rms_norm(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *, void *) {
  if (nparam != 5 || !all_float32(5, dtypes)) return 3;
  const int64_t dim = shapes[0][ndims[0] - 1], rows = numel(ndims[0], shapes[0]) / dim;
  if (numel(ndims[1], shapes[1]) != dim) return 2;
  const float *x = static_cast<const float *>(params[0]), *w = static_cast<const float *>(params[1]);
  const float eps = static_cast<const float *>(params[2])[0];
  float *y = static_cast<float *>(params[3]), *rstd = static_cast<float *>(params[4]);
  parallel_for(rows * dim, [&](int, int64_t begin, int64_t end) {
    for (int64_t r = (begin + dim - 1) / dim; r < rows && r * dim < end; ++r) {
      const float *xr = x + r * dim;
      float *yr = y + r * dim;
      float squares = 0;
#pragma omp simd reduction(+ : squares)
      for (int64_t j = 0; j < dim; ++j) squares += xr[j] * xr[j];
      const float factor = 1.0f / std::sqrt(squares / static_cast<float>(dim) + eps);
#pragma omp simd
      for (int64_t j = 0; j < dim; ++j) yr[j] = w[j] * (xr[j] * factor);
      rstd[r] = factor;
    }
  });
  return 0;
}

// The gradient of rms_norm: with g = dy * w, dx = r * g - x * r^3 * mean(g * x) per row, dw = sum over rows of
// dy * x * r. inputs: dy [rows, dim], x [rows, dim], w [dim], r [rows]; outputs: dx [rows, dim], dw [dim].
int rms_norm_grad(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *, void *) {
  if (nparam != 6 || !all_float32(6, dtypes)) return 3;
  const int64_t dim = shapes[1][ndims[1] - 1], rows = numel(ndims[1], shapes[1]) / dim;
  if (numel(ndims[0], shapes[0]) != rows * dim || numel(ndims[2], shapes[2]) != dim ||
      numel(ndims[3], shapes[3]) != rows)
    return 2;
  const float *dy = static_cast<const float *>(params[0]), *x = static_cast<const float *>(params[1]);
  const float *w = static_cast<const float *>(params[2]), *rstd = static_cast<const float *>(params[3]);
  float *dx = static_cast<float *>(params[4]), *dw = static_cast<float *>(params[5]);
  const int parts = parallel_parts(rows * dim);
  std::vector<float> partial(static_cast<size_t>(parts) * dim, 0.0f);  // dw of each part's rows
  parallel_for(rows * dim, [&](int part, int64_t begin, int64_t end) {
    float *acc = partial.data() + static_cast<int64_t>(part) * dim;
    for (int64_t r = (begin + dim - 1) / dim; r < rows && r * dim < end; ++r) {
      const float *dyr = dy + r * dim, *xr = x + r * dim;
      float *dxr = dx + r * dim;
      const float factor = rstd[r];
      float dot = 0;
#pragma omp simd reduction(+ : dot)
      for (int64_t j = 0; j < dim; ++j) dot += dyr[j] * w[j] * xr[j];
      const float shift = dot * factor * factor * factor / static_cast<float>(dim);
#pragma omp simd
      for (int64_t j = 0; j < dim; ++j) {
        dxr[j] = factor * dyr[j] * w[j] - xr[j] * shift;
        acc[j] += dyr[j] * xr[j] * factor;
      }
    }
  });
  std::fill(dw, dw + dim, 0.0f);
  for (int t = 0; t < parts; ++t)
    for (int64_t j = 0; j < dim; ++j) dw[j] += partial[static_cast<size_t>(t) * dim + j];
  return 0;
}

// Attention probabilities softmax(scale * scores + bias) and their gradient: MindSpore runs the scaling, the
// broadcast bias add and the softmax as three kernels forward and more backward, each keeping buffers the size
// of the [batch, heads, q, k] scores for the graph's life.
// softmax_bias inputs: scores [batch, heads, q, k], bias [batch, 1, q, k] (the mask, shared by the heads),
// scale [1]; output: probs [batch, heads, q, k].
int softmax_bias(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *, void *) {
  if (nparam != 4 || !all_float32(4, dtypes)) return 3;
  if (ndims[0] != 4 || ndims[1] != 4) return 2;
  const int64_t batch = shapes[0][0], heads = shapes[0][1], q = shapes[0][2], k = shapes[0][3];
  if (shapes[1][0] != batch || shapes[1][1] != 1 || shapes[1][2] != q || shapes[1][3] != k) return 2;
  const float *scores = static_cast<const float *>(params[0]), *bias = static_cast<const float *>(params[1]);
  const float scale = static_cast<const float *>(params[2])[0];
  float *probs = static_cast<float *>(params[3]);
  const int64_t rows = batch * heads * q;
  parallel_for(rows * k, [&](int, int64_t begin, int64_t end) {
    for (int64_t r = (begin + k - 1) / k; r < rows && r * k < end; ++r) {
      const int64_t b = r / (heads * q), i = r % q;
      const float *s = scores + r * k, *m = bias + (b * q + i) * k;
      float *p = probs + r * k;
#pragma omp simd
      for (int64_t j = 0; j < k; ++j) p[j] = s[j] * scale + m[j];
      const float top = row_max(p, k);
      const float total = exp_shifted_masked(p, p, k, top);
      const float factor = 1.0f / total;
#pragma omp simd
      for (int64_t j = 0; j < k; ++j) p[j] *= factor;
    }
  });
  return 0;
}

// The gradient of softmax_bias with respect to the scores: scale * p * (dp - sum(dp * p)) per row.
// inputs: dprobs [batch, heads, q, k], probs [batch, heads, q, k], scale [1]; output: dscores (same shape).
int softmax_bias_grad(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *,
                      void *) {
  if (nparam != 4 || !all_float32(4, dtypes)) return 3;
  const int64_t k = shapes[1][ndims[1] - 1], rows = numel(ndims[1], shapes[1]) / k;
  if (numel(ndims[0], shapes[0]) != rows * k) return 2;
  const float *dp = static_cast<const float *>(params[0]), *probs = static_cast<const float *>(params[1]);
  const float scale = static_cast<const float *>(params[2])[0];
  float *ds = static_cast<float *>(params[3]);
  parallel_for(rows * k, [&](int, int64_t begin, int64_t end) {
    for (int64_t r = (begin + k - 1) / k; r < rows && r * k < end; ++r) {
      const float *g = dp + r * k, *p = probs + r * k;
      float *out = ds + r * k;
      float dot = 0;
#pragma omp simd reduction(+ : dot)
      for (int64_t j = 0; j < k; ++j) dot += g[j] * p[j];
#pragma omp simd
      for (int64_t j = 0; j < k; ++j) out[j] = scale * p[j] * (g[j] - dot);
    }
  });
  return 0;
}

// Axes 1 and 2 of a 4-D tensor swapped, [a, b, c, d] -> [a, c, b, d] (attention's split and merge of heads):
// MindSpore's CPU Transpose keeps buffers the size of its tensor for a compiled graph's life; this copies rows
// of d elements. Its gradient is the same swap of the output's gradient. float32, float16 or bfloat16.
int swap_axes(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *, void *) {
  if (nparam != 2 || ndims[0] != 4 || std::strcmp(dtypes[0], dtypes[1]) != 0) return 2;
  int64_t element = 0;
  if (std::strcmp(dtypes[0], "float32") == 0)
    element = 4;
  else if (std::strcmp(dtypes[0], "float16") == 0 || std::strcmp(dtypes[0], "bfloat16") == 0)
    element = 2;
  else
    return 3;
  const int64_t a = shapes[0][0], b = shapes[0][1], c = shapes[0][2], row = shapes[0][3] * element;
  const char *x = static_cast<const char *>(params[0]);
  char *y = static_cast<char *>(params[1]);
  parallel_for(a * b * c * row, [&](int, int64_t begin, int64_t end) {
    for (int64_t r = (begin + row - 1) / row; r < a * b * c && r * row < end; ++r) {  // r: a row of x
      const int64_t i = r / (b * c), j = (r / c) % b, k = r % c;
      std::memcpy(y + ((i * c + k) * b + j) * row, x + r * row, row);
    }
  });
  return 0;
}

// KV-cache write in place: cache[row, head, slot, :] = values[b, h, s, :] for (row, head, slot) =
// index[b, h, s]. MindSpore's CPU ScatterNdUpdate copies the whole cache on every call (measured: 0.26 ms
// for a [32, 3, 128, 64] cache, 5 ms at 2048 slots), this touches only the written rows.
// inputs: cache [rows, heads, slots, dim], values [b, heads, s, dim] (same dtype: float32, float16 or
// bfloat16), index [b, heads, s, 3] int32; output: a [1] float32 tensor set to 1 (the side effect's handle).
int cache_write(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *, void *) {
  if (nparam != 4 || ndims[0] != 4 || ndims[1] != 4 || ndims[2] != 4) return 1;
  if (std::strcmp(dtypes[0], dtypes[1]) != 0 || std::strcmp(dtypes[2], "int32") != 0) return 3;
  int64_t element;
  if (std::strcmp(dtypes[0], "float32") == 0) element = 4;
  else if (std::strcmp(dtypes[0], "float16") == 0 || std::strcmp(dtypes[0], "bfloat16") == 0) element = 2;
  else return 3;
  char *cache = static_cast<char *>(params[0]);
  const char *values = static_cast<const char *>(params[1]);
  const int32_t *index = static_cast<const int32_t *>(params[2]);
  const int64_t rows = shapes[0][0], heads = shapes[0][1], slots = shapes[0][2], dim = shapes[0][3];
  const int64_t writes = shapes[1][0] * shapes[1][1] * shapes[1][2];
  if (shapes[1][3] != dim || shapes[2][0] * shapes[2][1] * shapes[2][2] != writes || shapes[2][3] != 3) return 2;
  const int64_t bytes = dim * element;
  for (int64_t i = 0; i < writes; ++i) {
    const int32_t row = index[3 * i], head = index[3 * i + 1], slot = index[3 * i + 2];
    if (row < 0 || row >= rows || head < 0 || head >= heads || slot < 0 || slot >= slots) return 4;
    std::memcpy(cache + ((row * heads + head) * slots + slot) * bytes, values + i * bytes, bytes);
  }
  static_cast<float *>(params[3])[0] = 1.0f;
  return 0;
}

// The embedding lookup's gradient added into a table's gradient in place: grad[ids[i], :] += d[i, :]. A tied
// table's gradient is the head's plus the lookup's; autodiff builds the lookup's as a dense [vocab, hidden]
// tensor (UnsortedSegmentSum) and sums the two into a third (AddN), 3 x 113 MB for SmolLM2; this adds the
// looked-up rows into the head's. Ids outside [0, vocab) are skipped (MindSpore's Gather reads zeros there and
// its gradient drops them). Rows go in order, so repeated ids add up as in the dense sum.
// inputs: grad [vocab, hidden] float32 (written), ids [n] int32 or int64, d [n, hidden] float32; output: a [1]
// float32 tensor set to 1 (the side effect's handle).
int embedding_grad_add(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *,
                       void *) {
  if (nparam != 4 || ndims[0] != 2 || ndims[2] < 1) return 1;
  const bool ids64 = std::strcmp(dtypes[1], "int64") == 0;
  if (std::strcmp(dtypes[0], "float32") != 0 || std::strcmp(dtypes[2], "float32") != 0 ||
      (!ids64 && std::strcmp(dtypes[1], "int32") != 0))
    return 3;
  const int64_t vocab = shapes[0][0], hidden = shapes[0][1], n = numel(ndims[1], shapes[1]);
  if (shapes[2][ndims[2] - 1] != hidden || numel(ndims[2], shapes[2]) != n * hidden) return 2;
  float *grad = static_cast<float *>(params[0]);
  const float *d = static_cast<const float *>(params[2]);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t id = ids64 ? static_cast<const int64_t *>(params[1])[i] : static_cast<const int32_t *>(params[1])[i];
    if (id < 0 || id >= vocab) continue;
    float *row = grad + id * hidden;
    const float *src = d + i * hidden;
#pragma omp simd
    for (int64_t j = 0; j < hidden; ++j) row[j] += src[j];
  }
  static_cast<float *>(params[3])[0] = 1.0f;
  return 0;
}

// Multi-LoRA delta (Punica / S-LoRA's segmented product, SGMV) for the serving engine's adapter pool: each
// row of the batch adds its own adapter's low-rank product,
//   out[t] = (x[t] . A[s]^T)[:k] . BT[s][:k]      for every token t of a row with slot s >= 0, k = ranks[s]
// and 0 for base rows (slot < 0) and slots of rank 0. The tokens of one slot, adjacent in the batch or not,
// go in blocks of TOKENS: the adapter's factors are read once per block, not once per token.
// With a sixth input `base` [rows, ..., out] the output is base + that (the layer's own product; one op less
// per layer than adding it in the graph).
// inputs: x [rows, ..., in] float32, a [slots, max_rank, in] and bt [slots, max_rank, out] (column-blocked,
// see COLUMNS) both float32 or both float16 (widened as read), ranks [slots] int32, row_slots [>= rows] int32 (entries past `rows` are
// ignored), optional base; output: [rows, ..., out] float32.
int lora_delta(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *, void *) {
  if ((nparam != 6 && nparam != 7) || ndims[0] < 2 || ndims[1] != 3 || ndims[2] != 3 || ndims[3] != 1 ||
      ndims[4] != 1)
    return 1;
  const bool half = std::strcmp(dtypes[1], "float16") == 0;
  if (std::strcmp(dtypes[0], "float32") != 0 || (!half && std::strcmp(dtypes[1], "float32") != 0) ||
      std::strcmp(dtypes[2], dtypes[1]) != 0 || std::strcmp(dtypes[3], "int32") != 0 ||
      std::strcmp(dtypes[4], "int32") != 0 || std::strcmp(dtypes[5], "float32") != 0 ||
      (nparam == 7 && std::strcmp(dtypes[6], "float32") != 0))
    return 3;
  const float *x = static_cast<const float *>(params[0]);
  const int32_t *ranks = static_cast<const int32_t *>(params[3]);
  const int32_t *row_slots = static_cast<const int32_t *>(params[4]);
  const float *base = nparam == 7 ? static_cast<const float *>(params[5]) : nullptr;  // out = base + delta
  float *out = static_cast<float *>(params[nparam - 1]);
  const int64_t rows = shapes[0][0], in = shapes[0][ndims[0] - 1];
  const int64_t tokens = numel(ndims[0], shapes[0]) / in, per_row = tokens / rows;
  const int64_t slots = shapes[1][0], max_rank = shapes[1][1], out_n = shapes[2][2];
  if (shapes[1][2] != in || shapes[2][0] != slots || shapes[2][1] != max_rank || shapes[3][0] != slots ||
      shapes[4][0] < rows || (base != nullptr && numel(ndims[5], shapes[5]) != tokens * out_n))
    return 2;
  // A row without an adapter is base (or zeros). A block's rows get its products from zeros, then base is
  // added (while they are in cache): the delta's rounding is linear_lora's, so the two kernels give the same
  // numbers. cost counts multiply-adds.
  const std::vector<LoraBlock> blocks = lora_blocks(rows, per_row, row_slots, ranks, slots, max_rank);
  std::vector<char> adapted(rows, 0);
  for (const LoraBlock &blk : blocks)
    for (int64_t t = 0; t < blk.count; ++t) adapted[blk.token[t] / per_row] = 1;
  for (int64_t r = 0; r < rows; ++r) {
    if (adapted[r]) continue;
    if (base != nullptr)
      std::memcpy(out + r * per_row * out_n, base + r * per_row * out_n, sizeof(float) * per_row * out_n);
    else
      std::memset(out + r * per_row * out_n, 0, sizeof(float) * per_row * out_n);
  }
  int64_t cost = 0;
  for (const LoraBlock &blk : blocks) cost += blk.count * blk.rank * (in + out_n);
  auto run = [&](int64_t first, int64_t last) {
    std::vector<float> h(TOKENS * max_rank);
    for (int64_t b = first; b < last; ++b) {
      float *os[TOKENS];
      for (int64_t t = 0; t < blocks[b].count; ++t) os[t] = out + blocks[b].token[t] * out_n;
      const LoraBlock *next = b + 1 < last ? &blocks[b + 1] : nullptr;
      (half ? lora_block_products<half_t> : lora_block_products<float>)(blocks[b], next, x, params[1], params[2],
                                                                        in, out_n, max_rank, os, h.data());
      if (base != nullptr)
        for (int64_t t = 0; t < blocks[b].count; ++t) {
          const float *bt = base + blocks[b].token[t] * out_n;
          for (int64_t j = 0; j < out_n; ++j) os[t][j] += bt[j];
        }
    }
  };
  const int64_t count = static_cast<int64_t>(blocks.size());
  // the helper from ~0.5M multiply-adds (rank 8 x 32 rows, ~12 us): it costs the call ~1 us when it cannot run
  if (cost < (int64_t(1) << 19) || count < 2 || threads() < 2) {
    run(0, count);
  } else {
    Helper::get().run(count, 1, run);
  }
  return 0;
}

// y = x w^T for few rows (a decode step; see linear_dots). inputs: x [..., k], w [n, k], float32; output:
// y [..., n] float32. Both threads take blocks of w's rows.
int linear(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *, void *) {
  if (nparam != 3 || ndims[0] < 1 || ndims[1] != 2) return 1;
  if (!all_float32(nparam, dtypes)) return 3;
  const int64_t k = shapes[1][1], n = shapes[1][0], m = k == 0 ? 0 : numel(ndims[0], shapes[0]) / k;
  if (shapes[0][ndims[0] - 1] != k || numel(ndims[2], shapes[2]) != m * n) return 2;
  const float *x = static_cast<const float *>(params[0]);
  const float *w = static_cast<const float *>(params[1]);
  float *y = static_cast<float *>(params[2]);
  constexpr int NB = 4;
  // Weight rows a thread takes at a time. A single row (batch-1 decode) reads w one row after the other:
  // one stream, which one core reads at about the memory's speed (SmolLM2's 210 layers: ~17 ms, where NB
  // rows side by side took ~23 ms on two threads); each dot product sums in the same order either way.
  const int64_t chunk = m == 1 ? 64 : 8 * NB;
  auto run = [&](int64_t first, int64_t last) {
    const int64_t j0 = first * chunk, j1 = std::min(last * chunk, n);
    if (m != 1) return linear_rows<NB>(x, w, y, m, k, n, j0, j1);
    for (int64_t j = j0; j < j1; ++j) linear_dots<1, 1, false>(&x, w + j * k, k, &y, j);
  };
  const int64_t chunks = (n + chunk - 1) / chunk;
  if (m * n * k < (int64_t(1) << 17) || chunks < 2 || threads() < 2) {
    run(0, chunks);
  } else {
    Helper::get().run(chunks, 1, run);
  }
  return 0;
}

// y = x w^T plus each row's own LoRA product (lora_delta's), in one kernel: a decode step's adapted layer.
// Two kinds of work: the base product in chunks of w's rows (columns of y), bound by arithmetic, and the
// adapters' products a block of tokens at a time (the slot's factors read front to back once), bound by
// memory; the latter go to a scratch z of y's shape. Each of two threads starts on its own kind (one
// the blocks, the other the chunks), then takes what is left of the other: one core streams the factors
// while the other multiplies. (Reading a chunk's factors between its base product's arithmetic, on both
// threads, made 8 adapters of rank 64 cost a decode step's 210 layers ~29 ms over the base's ~61; this way
// ~21.) Whichever ends last, a chunk's base product or the last block, adds the chunk's columns of z to y:
// y = (x w^T + bias) + z however the threads ran, which is lora_delta's base + delta.
// inputs: x [rows, ..., k] float32, w [n, k] float32, a [slots, max_rank, k] and bt [slots, max_rank, n] (column-blocked; both
// float32 or both float16, widened as read), ranks [slots] int32, row_slots [>= rows] int32 (as lora_delta's),
// optional bias [n] float32 (added before the adapters' products, as a Linear's output is before lora_delta's);
// output: y [rows, ..., n] float32.
int linear_lora(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *, void *) {
  if ((nparam != 7 && nparam != 8) || ndims[0] < 2 || ndims[1] != 2 || ndims[2] != 3 || ndims[3] != 3 ||
      ndims[4] != 1 || ndims[5] != 1 || (nparam == 8 && ndims[6] != 1))
    return 1;
  const bool half = std::strcmp(dtypes[2], "float16") == 0;
  if (std::strcmp(dtypes[0], "float32") != 0 || std::strcmp(dtypes[1], "float32") != 0 ||
      (!half && std::strcmp(dtypes[2], "float32") != 0) || std::strcmp(dtypes[3], dtypes[2]) != 0 ||
      std::strcmp(dtypes[4], "int32") != 0 || std::strcmp(dtypes[5], "int32") != 0 ||
      std::strcmp(dtypes[6], "float32") != 0 || (nparam == 8 && std::strcmp(dtypes[7], "float32") != 0))
    return 3;
  const int64_t k = shapes[1][1], n = shapes[1][0], rows = shapes[0][0];
  const int64_t m = k == 0 ? 0 : numel(ndims[0], shapes[0]) / k, per_row = rows == 0 ? 0 : m / rows;
  const int64_t slots = shapes[2][0], max_rank = shapes[2][1];
  if (shapes[0][ndims[0] - 1] != k || shapes[2][2] != k || shapes[3][0] != slots || shapes[3][1] != max_rank ||
      shapes[3][2] != n || shapes[4][0] != slots || shapes[5][0] < rows || (nparam == 8 && shapes[6][0] != n) ||
      numel(ndims[nparam - 1], shapes[nparam - 1]) != m * n)
    return 2;
  const float *x = static_cast<const float *>(params[0]);
  const float *w = static_cast<const float *>(params[1]);
  const int32_t *ranks = static_cast<const int32_t *>(params[4]);
  const int32_t *row_slots = static_cast<const int32_t *>(params[5]);
  const float *bias = nparam == 8 ? static_cast<const float *>(params[6]) : nullptr;
  float *y = static_cast<float *>(params[nparam - 1]);
  const std::vector<LoraBlock> blocks = lora_blocks(rows, per_row, row_slots, ranks, slots, max_rank);
  const int64_t count = static_cast<int64_t>(blocks.size());
  constexpr int NB = 4, CHUNK = COLUMNS;  // weight rows (columns of y) a chunk takes
  const int64_t chunks = (n + CHUNK - 1) / CHUNK;
  // z: y's shape, a token's products in its row (rows without an adapter unused). Kept by the calling
  // thread: a new buffer this size (a few hundred KB) is mapped afresh, so page-faulted, by every call.
  static thread_local std::vector<float> z_rows;
  if (z_rows.size() < static_cast<size_t>(m * n)) z_rows.resize(m * n);
  float *z = z_rows.data();
  // ended[c]: how many of chunk c's two parts (its base product, all the blocks) are done; with no blocks,
  // one already is.
  std::unique_ptr<std::atomic<int>[]> ended(new std::atomic<int>[chunks]);
  for (int64_t c = 0; c < chunks; ++c) ended[c].store(count == 0 ? 1 : 0, std::memory_order_relaxed);
  // Each on a cache line of its own: the threads take items from different counters, ~13,000 a decode step.
  struct alignas(64) Counter { std::atomic<int64_t> value{0}; };
  Counter next_block, next_chunk, blocks_done;
  auto part_done = [&](int64_t c) {  // the second of chunk c's parts adds its columns of z to y
    if (ended[c].fetch_add(1, std::memory_order_acq_rel) != 1) return;
    const int64_t j0 = c * CHUNK, j1 = std::min<int64_t>(j0 + CHUNK, n);
    for (int64_t b = 0; b < count; ++b)
      for (int64_t t = 0; t < blocks[b].count; ++t) {
        float *yt = y + blocks[b].token[t] * n;
        const float *zt = z + blocks[b].token[t] * n;
        for (int64_t j = j0; j < j1; ++j) yt[j] += zt[j];
      }
  };
  auto take_block = [&](float *h) {
    const int64_t b = next_block.value.fetch_add(1, std::memory_order_relaxed);
    if (b >= count) return false;
    float *os[TOKENS];
    for (int64_t t = 0; t < blocks[b].count; ++t) os[t] = z + blocks[b].token[t] * n;
    const LoraBlock *next = b + 1 < count ? &blocks[b + 1] : nullptr;
    (half ? lora_block_products<half_t> : lora_block_products<float>)(blocks[b], next, x, params[2], params[3], k,
                                                                      n, max_rank, os, h);
    if (blocks_done.value.fetch_add(1, std::memory_order_acq_rel) == count - 1)
      for (int64_t c = 0; c < chunks; ++c) part_done(c);
    return true;
  };
  auto take_chunk = [&] {
    const int64_t c = next_chunk.value.fetch_add(1, std::memory_order_relaxed);
    if (c >= chunks) return false;
    const int64_t j0 = c * CHUNK, j1 = std::min<int64_t>(j0 + CHUNK, n);
    linear_rows<NB>(x, w, y, m, k, n, j0, j1);
    if (bias != nullptr)
      for (int64_t t = 0; t < m; ++t)
        for (int64_t j = j0; j < j1; ++j) y[t * n + j] += bias[j];
    part_done(c);
    return true;
  };
  auto work = [&](int64_t role, int64_t) {  // role 0 starts on the blocks, role 1 on the chunks
    std::vector<float> h(TOKENS * max_rank);
    if (role == 0) {
      while (take_block(h.data())) {}
      while (take_chunk()) {}
    } else {
      while (take_chunk()) {}
      while (take_block(h.data())) {}
    }
  };
  if (m * n * k < (int64_t(1) << 17) || chunks < 2 || threads() < 2) {
    work(0, 1);
  } else {
    Helper::get().run(2, 1, work);
  }
  return 0;
}

// SwiGLU's gate (Shazeer 2020): y = silu(g) * u, elementwise over any shape (MindSpore: SiLU, Mul and, in
// the backward pass, SiLUGrad and two Muls, each a kernel with its own buffer).
// inputs: g, u (same number of elements); output: y.
int swiglu(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *, void *) {
  if (nparam != 3) return 1;
  if (!all_float32(nparam, dtypes)) return 3;
  const int64_t n = numel(ndims[0], shapes[0]);
  if (numel(ndims[1], shapes[1]) != n || numel(ndims[2], shapes[2]) != n) return 2;
  const float *g = static_cast<const float *>(params[0]);
  const float *u = static_cast<const float *>(params[1]);
  float *y = static_cast<float *>(params[2]);
  parallel_for(n, [=](int, int64_t begin, int64_t end) {
#pragma omp simd
    for (int64_t i = begin; i < end; ++i) y[i] = g[i] * sigmoid(g[i]) * u[i];
  });
  return 0;
}

// The gradient of swiglu: dg = dy u sig(g) (1 + g (1 - sig(g))), du = dy silu(g).
// inputs: dy, g, u (same number of elements); outputs: dg, du.
int swiglu_grad(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *, void *) {
  if (nparam != 5) return 1;
  if (!all_float32(nparam, dtypes)) return 3;
  const int64_t n = numel(ndims[0], shapes[0]);
  for (int i = 1; i < 5; ++i)
    if (numel(ndims[i], shapes[i]) != n) return 2;
  const float *dy = static_cast<const float *>(params[0]);
  const float *g = static_cast<const float *>(params[1]);
  const float *u = static_cast<const float *>(params[2]);
  float *dg = static_cast<float *>(params[3]);
  float *du = static_cast<float *>(params[4]);
  parallel_for(n, [=](int, int64_t begin, int64_t end) {
#pragma omp simd
    for (int64_t i = begin; i < end; ++i) {
      const float s = sigmoid(g[i]);
      dg[i] = dy[i] * u[i] * (s * (1.0f + g[i] * (1.0f - s)));
      du[i] = dy[i] * (g[i] * s);
    }
  });
  return 0;
}

// Rotary position embedding, "rotate half" layout (Hugging Face Llama's apply_rotary_pos_emb):
// y = x cos + rotate_half(x) sin, one pass (MindSpore: two slices, a Neg, a Concat, two Muls and an Add, each
// with its own buffer, and as many again in the backward pass).
// inputs: x [batch, heads, seq, dim], cos, sin [batch or 1, 1, seq, dim]; output: y like x.
int rotary(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *, void *) {
  return rotary_kernel<false>(nparam, params, ndims, shapes, dtypes);
}

// The gradient of rotary with respect to x: dx = dy cos + R^T(dy sin), R^T([w1, w2]) = [w2, -w1].
// inputs: dy [batch, heads, seq, dim], cos, sin as for rotary; output: dx like dy.
int rotary_grad(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *, void *) {
  return rotary_kernel<true>(nparam, params, ndims, shapes, dtypes);
}

}  // extern "C"
