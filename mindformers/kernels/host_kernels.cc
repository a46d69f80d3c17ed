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

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
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

int threads() {
  static const int count = [] {
    const char *env = std::getenv("OMP_NUM_THREADS");
    int n = env ? std::atoi(env) : static_cast<int>(std::thread::hardware_concurrency());
    return n < 1 ? 1 : (n > 64 ? 64 : n);
  }();
  return count;
}

// Runs body(worker, begin, end) over [0, n) split into contiguous parts, one per thread, each at least
// min_per_thread long: small tensors stay on the calling thread (starting a thread costs ~20 us).
template <typename Body>
void parallel_for(int64_t n, Body body, int64_t min_per_thread = 1 << 15) {
  int parts = threads();
  if (n / min_per_thread < parts) parts = static_cast<int>(n / min_per_thread);
  if (parts <= 1) {
    body(0, 0, n);
    return;
  }
  std::vector<std::thread> pool;
  const int64_t chunk = (n + parts - 1) / parts;
  for (int w = 1; w < parts; ++w) {
    int64_t begin = w * chunk, end = begin + chunk < n ? begin + chunk : n;
    pool.emplace_back(body, w, begin, end);
  }
  body(0, 0, chunk);
  for (auto &t : pool) t.join();
}

float row_max(const float *x, int64_t n) {
  float top = x[0];
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

}  // namespace

extern "C" {

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
  });
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
  std::vector<double> partial(threads() + 1, 0.0);
  parallel_for(n, [&](int w, int64_t begin, int64_t end) {
    double acc0 = 0, acc1 = 0, acc2 = 0, acc3 = 0;  // four chains, so the adds pipeline
    int64_t i = begin;
    for (; i + 4 <= end; i += 4) {
      acc0 += double(x[i]) * x[i];
      acc1 += double(x[i + 1]) * x[i + 1];
      acc2 += double(x[i + 2]) * x[i + 2];
      acc3 += double(x[i + 3]) * x[i + 3];
    }
    for (; i < end; ++i) acc0 += double(x[i]) * x[i];
    partial[w] = (acc0 + acc1) + (acc2 + acc3);
  });
  double total = 0;
  for (double part : partial) total += part;
  static_cast<float *>(params[1])[0] = static_cast<float>(total);
  return 0;
}

// Softmax cross entropy of logits rows against labels, with its gradient (what Liger Kernel's fused
// linear cross entropy computes per chunk): loss_sum = sum over rows with label >= 0 of
// logsumexp(row) - row[label]; grad = scale * (softmax(row) - onehot(label)), zero on ignored rows.
// inputs: logits [rows, vocab] float32, labels [rows] int32 (negative: ignored), scale [1] float32;
// outputs: loss_sum [1] float32, grad [rows, vocab] float32.
int softmax_cross_entropy(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *,
                          void *) {
  if (nparam != 5 || ndims[0] != 2) return 1;
  if (std::strcmp(dtypes[0], "float32") != 0 || std::strcmp(dtypes[1], "int32") != 0 ||
      std::strcmp(dtypes[2], "float32") != 0 || std::strcmp(dtypes[3], "float32") != 0 ||
      std::strcmp(dtypes[4], "float32") != 0)
    return 3;
  const float *logits = static_cast<const float *>(params[0]);
  const int32_t *labels = static_cast<const int32_t *>(params[1]);
  const float scale = static_cast<const float *>(params[2])[0];
  float *grad = static_cast<float *>(params[4]);
  const int64_t rows = shapes[0][0], vocab = shapes[0][1];
  if (numel(ndims[1], shapes[1]) != rows) return 2;
  std::vector<double> partial(threads() + 1, 0.0);
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
      const float top = row_max(x, vocab);
      const float total = exp_shifted(x, g, vocab, top);  // g = exp(x - top)
      const float factor = scale / total;
      for (int64_t j = 0; j < vocab; ++j) g[j] *= factor;
      g[label] -= scale;
      loss += double(top) + std::log(double(total)) - double(x[label]);
    }
    partial[w] = loss;
  });
  double total = 0;
  for (double part : partial) total += part;
  static_cast<float *>(params[3])[0] = static_cast<float>(total);
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

// Multi-LoRA delta (Punica / S-LoRA's segmented product, SGMV) for the serving engine's adapter pool: each
// row of the batch adds its own adapter's low-rank product,
//   out[t] = (x[t] . A[s]^T)[:k] . BT[s][:k]      for every token t of a row with slot s >= 0, k = ranks[s]
// and 0 for base rows (slot < 0) and slots of rank 0. Runs of rows with one slot are one segment: the
// adapter's factors are read once per block of BLOCK tokens, not once per token.
// inputs: x [rows, ..., in] float32, a [slots, max_rank, in] float32, bt [slots, max_rank, out] float32,
// ranks [slots] int32, row_slots [>= rows] int32 (entries past `rows` are ignored);
// output: [rows, ..., out] float32.
int lora_delta(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *, void *) {
  if (nparam != 6 || ndims[0] < 2 || ndims[1] != 3 || ndims[2] != 3 || ndims[3] != 1 || ndims[4] != 1) return 1;
  if (std::strcmp(dtypes[0], "float32") != 0 || std::strcmp(dtypes[1], "float32") != 0 ||
      std::strcmp(dtypes[2], "float32") != 0 || std::strcmp(dtypes[3], "int32") != 0 ||
      std::strcmp(dtypes[4], "int32") != 0 || std::strcmp(dtypes[5], "float32") != 0)
    return 3;
  const float *x = static_cast<const float *>(params[0]);
  const float *a = static_cast<const float *>(params[1]);
  const float *bt = static_cast<const float *>(params[2]);
  const int32_t *ranks = static_cast<const int32_t *>(params[3]);
  const int32_t *row_slots = static_cast<const int32_t *>(params[4]);
  float *out = static_cast<float *>(params[5]);
  const int64_t rows = shapes[0][0], in = shapes[0][ndims[0] - 1];
  const int64_t tokens = numel(ndims[0], shapes[0]) / in, per_row = tokens / rows;
  const int64_t slots = shapes[1][0], max_rank = shapes[1][1], out_n = shapes[2][2];
  if (shapes[1][2] != in || shapes[2][0] != slots || shapes[2][1] != max_rank || shapes[3][0] != slots ||
      shapes[4][0] < rows)
    return 2;
  std::memset(out, 0, sizeof(float) * tokens * out_n);
  // blocks of up to BLOCK tokens of one segment; cost counts multiply-adds
  constexpr int64_t BLOCK = 4;
  struct Block { int64_t slot, rank, begin, end; };
  std::vector<Block> blocks;
  int64_t cost = 0;
  for (int64_t r = 0; r < rows;) {
    const int64_t slot = row_slots[r];
    int64_t next = r + 1;
    while (next < rows && row_slots[next] == slot) ++next;
    const int64_t rank = (slot >= 0 && slot < slots) ? std::min<int64_t>(ranks[slot], max_rank) : 0;
    if (rank > 0) {
      for (int64_t t = r * per_row; t < next * per_row; t += BLOCK)
        blocks.push_back({slot, rank, t, std::min(t + BLOCK, next * per_row)});
      cost += (next - r) * per_row * rank * (in + out_n);
    }
    r = next;
  }
  auto run = [&](int64_t first, int64_t last) {
    float h[BLOCK][256];
    for (int64_t b = first; b < last; ++b) {
      const Block &blk = blocks[b];
      const float *as = a + blk.slot * max_rank * in, *bs = bt + blk.slot * max_rank * out_n;
      const int64_t n = blk.end - blk.begin;
      for (int64_t j0 = 0; j0 < blk.rank; j0 += 256) {  // ranks above 256 in chunks of 256
        const int64_t j1 = std::min<int64_t>(blk.rank, j0 + 256);
        for (int64_t j = j0; j < j1; ++j) {  // h[t][j] = x[t] . A[j]
          const float *aj = as + j * in;
          for (int64_t t = 0; t < n; ++t) {
            const float *xt = x + (blk.begin + t) * in;
            float acc = 0;
#pragma omp simd reduction(+ : acc)
            for (int64_t i = 0; i < in; ++i) acc += xt[i] * aj[i];
            h[t][j - j0] = acc;
          }
        }
        for (int64_t j = j0; j < j1; ++j) {  // out[t] += h[t][j] * BT[j]
          const float *bj = bs + j * out_n;
          for (int64_t t = 0; t < n; ++t) {
            float *ot = out + (blk.begin + t) * out_n;
            const float hj = h[t][j - j0];
#pragma omp simd
            for (int64_t o = 0; o < out_n; ++o) ot[o] += hj * bj[o];
          }
        }
      }
    }
  };
  const int64_t count = static_cast<int64_t>(blocks.size());
  if (cost < (int64_t(1) << 21) || count < 2) {  // ~2M multiply-adds: below that a thread costs more than it saves
    run(0, count);
  } else {
    parallel_for(count, [&](int, int64_t begin, int64_t end) { run(begin, end); }, 1);
  }
  return 0;
}

}  // extern "C"
