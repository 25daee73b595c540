// LEO's small element-wise chains as single MindSpore CPU operators ("aot" Custom ops).
//
// On MindSpore's CPU runtime every operator launch costs ~25 us of host time whatever its
// size, and a LEO step is ~400 launches of tiny tensors: the launches, not the arithmetic,
// set the step time. Each function here replaces a chain of built-in operators (forward or
// its hand-written gradient) by one launch computing the same values. leo_core/fused_ops.py
// compiles this file, wraps each function in ops.Custom and defines the gradients;
// tests/leo_core/test_fused_ops.py checks every function against the built-in chain it
// replaces and the model's gradients against the float64 reference.
//
// Calling convention (MindSpore aot): params holds the inputs then the outputs, all float32,
// contiguous, row-major; shapes[i] has ndims[i] extents. Return 0 on success.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

int64_t Size(int ndim, const int64_t *shape) {
  int64_t n = 1;
  for (int i = 0; i < ndim; i++) n *= shape[i];
  return n;
}

const float *In(void **params, int i) { return static_cast<const float *>(params[i]); }
float *Out(void **params, int i) { return static_cast<float *>(params[i]); }

// Dot product with eight partial sums (vectorises without -ffast-math).
float Dot(const float *a, const float *b, int64_t n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; j++) acc[j] += a[i + j] * b[i + j];
  float s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
  for (; i < n; i++) s += a[i] * b[i];
  return s;
}

// exp(x) for float32 to ~2 ulp: 2^n * e^r with |r| <= ln2/2 and a degree-7 Taylor
// polynomial (truncation error < 3e-9 relative on that range). Written so the compiler
// vectorises loops over it (glibc's expf is a scalar call; nearbyint needs SSE4.1, hence
// the rounding by adding and subtracting 1.5 * 2^23). Below -87.3 gives 0, above 88 exp(88).
inline float Exp(float x) {
  const float low = -87.3f;
  x = x < low ? low : x;
  x = x > 88.0f ? 88.0f : x;
  const float round = 12582912.0f;  // 1.5 * 2^23
  float n = (x * 1.44269504088896341f + round) - round;
  // ln2 split in two so that x - n*ln2 is exact for |n| < 2^8.
  float r = (x - n * 0.693145751953125f) - n * 1.428606765330187e-06f;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return x <= low ? 0.0f : p * scale;
}

// out[c] = x . w[c] for the N rows of w [N, d]: one pass over x with a vector of partial
// sums per class, the class count a compile-time constant so that the partial sums stay in
// registers (N = 5 in the published experiments; other counts up to 8 likewise).
constexpr int64_t kLanes = 16;
template <int64_t N>
void DotRowsN(const float *x, const float *w, int64_t d, float *out) {
  float acc[N][kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= d; i += kLanes)
    for (int64_t c = 0; c < N; c++)
      for (int64_t j = 0; j < kLanes; j++) acc[c][j] += x[i + j] * w[c * d + i + j];
  for (int64_t c = 0; c < N; c++) {
    float s = 0;
    for (int64_t j = 0; j < kLanes; j++) s += acc[c][j];
    for (int64_t k = i; k < d; k++) s += x[k] * w[c * d + k];
    out[c] = s;
  }
}

void DotRows(const float *x, const float *w, int64_t n_cls, int64_t d, float *out) {
  using Fn = void (*)(const float *, const float *, int64_t, float *);
  static const Fn fixed[] = {nullptr, DotRowsN<1>, DotRowsN<2>, DotRowsN<3>, DotRowsN<4>,
                             DotRowsN<5>, DotRowsN<6>, DotRowsN<7>, DotRowsN<8>};
  if (n_cls < 9) return fixed[n_cls](x, w, d, out);
  for (int64_t c = 0; c < n_cls; c++) out[c] = Dot(x, w + c * d, d);
}

// g[c] += coef[c] * x for the n_cls rows of g [n_cls, d].
void AxpyRows(const float *coef, const float *x, int64_t n_cls, int64_t d, float *g) {
  for (int64_t c = 0; c < n_cls; c++) {
    float *gc = g + c * d;
    const float a = coef[c];
    for (int64_t i = 0; i < d; i++) gc[i] += a * x[i];
  }
}

// Row m of logits x[m] . w[c] for c < N, turned into softmax probabilities in p.
void SoftmaxRow(const float *x, const float *w, int64_t n_cls, int64_t d, float *p) {
  DotRows(x, w, n_cls, d, p);
  float top = -INFINITY;
  for (int64_t c = 0; c < n_cls; c++) top = p[c] > top ? p[c] : top;
  float sum = 0;
  for (int64_t c = 0; c < n_cls; c++) {
    p[c] = std::exp(p[c] - top);
    sum += p[c];
  }
  for (int64_t c = 0; c < n_cls; c++) p[c] /= sum;
}

// Std of a decoded weight from the decoder's `u` output: max(exp(u) - offset, 1e-10), and
// d(std * eps)/du = eps * exp(u) where the clamp is inactive, 0 where it holds.
inline void Spread(float u, float eps, float offset, float *spread, float *dw_du) {
  float e = Exp(u);
  float sd = e - offset;
  bool live = sd > 1e-10f;
  *spread = (live ? sd : 1e-10f) * eps;
  *dw_du = live ? eps * e : 0.0f;
}

// The support set of B tasks: x [B,M,D] (M examples of width D), one-hot labels y [B,M,N].
struct Support {
  int64_t b_n, m_n, d, c_n;
  const float *x, *y;
};

Support SupportOf(int64_t **shapes, void **params, int x_at) {
  return {shapes[x_at][0], shapes[x_at][1], shapes[x_at][2], shapes[x_at + 1][2], In(params, x_at),
          In(params, x_at + 1)};
}

// g[b] = (softmax(x[b] w[b]^T) - y[b])^T x[b]: the gradient of the summed support
// cross-entropy with respect to the class weights w [B,N,D]; with `scale` [B], task b's
// gradient times scale[b].
void ClassGradCore(const Support &s, const float *w, float *g, const float *scale = nullptr) {
  std::vector<float> p(s.c_n);
  std::memset(g, 0, sizeof(float) * s.b_n * s.c_n * s.d);
  for (int64_t b = 0; b < s.b_n; b++) {
    const float *wb = w + b * s.c_n * s.d;
    float *gb = g + b * s.c_n * s.d;
    for (int64_t m = 0; m < s.m_n; m++) {
      const float *xm = s.x + (b * s.m_n + m) * s.d;
      SoftmaxRow(xm, wb, s.c_n, s.d, p.data());
      for (int64_t c = 0; c < s.c_n; c++) {
        const float delta = p[c] - s.y[(b * s.m_n + m) * s.c_n + c];
        p[c] = scale == nullptr ? delta : scale[b] * delta;
      }
      AxpyRows(p.data(), xm, s.c_n, s.d, gb);
    }
  }
}

// dw += the gradient of ClassGradCore's output with respect to w given its cotangent
// cot [B,N,D]: with p = softmax(x w^T), dDelta = x cot^T, dLogits = p * (dDelta -
// sum(p * dDelta)), dw = dLogits^T x.
void ClassGradVjpCore(const Support &s, const float *w, const float *cot, float *dw) {
  std::vector<float> p(s.c_n), dl(s.c_n);
  for (int64_t b = 0; b < s.b_n; b++) {
    const float *wb = w + b * s.c_n * s.d, *gb = cot + b * s.c_n * s.d;
    float *dwb = dw + b * s.c_n * s.d;
    for (int64_t m = 0; m < s.m_n; m++) {
      const float *xm = s.x + (b * s.m_n + m) * s.d;
      SoftmaxRow(xm, wb, s.c_n, s.d, p.data());
      DotRows(xm, gb, s.c_n, s.d, dl.data());
      float along = 0;
      for (int64_t c = 0; c < s.c_n; c++) along += p[c] * dl[c];
      for (int64_t c = 0; c < s.c_n; c++) dl[c] = p[c] * (dl[c] - along);
      AxpyRows(dl.data(), xm, s.c_n, s.d, dwb);
    }
  }
}

// out = x + rate * g over `rows` rows of width c, rate [c].
void DescendCore(const float *x, const float *rate, const float *g, int64_t rows, int64_t c, float *out) {
  for (int64_t r = 0; r < rows; r++)
    for (int64_t i = 0; i < c; i++) out[r * c + i] = x[r * c + i] + rate[i] * g[r * c + i];
}

// DescendCore's gradients other than x's (the cotangent itself): d_rate [c] = sum over
// rows of dout * g, d_g = dout * rate.
void DescendVjpCore(const float *rate, const float *g, const float *dout, int64_t rows, int64_t c,
                    float *d_rate, float *d_g) {
  std::vector<double> sum(c, 0.0);  // across tasks: double, so a split over ranks rounds alike
  for (int64_t r = 0; r < rows; r++)
    for (int64_t i = 0; i < c; i++) {
      sum[i] += dout[r * c + i] * g[r * c + i];
      d_g[r * c + i] = dout[r * c + i] * rate[i];
    }
  for (int64_t i = 0; i < c; i++) d_rate[i] = static_cast<float>(sum[i]);
}

}  // namespace

extern "C" {

// The support gradient: x [B,M,D], y [B,M,N], w [B,N,D] -> g [B,N,D] (ClassGradCore).
int ClassGrad(int nparam, void **params, int *, int64_t **shapes, const char **, void *, void *) {
  if (nparam != 4) return 1;
  ClassGradCore(SupportOf(shapes, params, 0), In(params, 2), Out(params, 3));
  return 0;
}

// ClassGrad's gradient with respect to w: x, y, w, cot [B,N,D] -> dw [B,N,D].
int ClassGradVjp(int nparam, void **params, int *, int64_t **shapes, const char **, void *, void *) {
  if (nparam != 5) return 1;
  const Support s = SupportOf(shapes, params, 0);
  float *dw = Out(params, 4);
  std::memset(dw, 0, sizeof(float) * s.b_n * s.c_n * s.d);
  ClassGradVjpCore(s, In(params, 2), In(params, 3), dw);
  return 0;
}

// out = x + rate * g, rate [C] along the last axis of x, g [..., C].
int Descend(int nparam, void **params, int *ndims, int64_t **shapes, const char **, void *, void *) {
  if (nparam != 4) return 1;
  const int64_t c = shapes[1][0], rows = Size(ndims[0], shapes[0]) / c;
  DescendCore(In(params, 0), In(params, 1), In(params, 2), rows, c, Out(params, 3));
  return 0;
}

// Descend's gradients other than x's: rate, g, dout -> d_rate [C], d_g (DescendVjpCore).
int DescendVjp(int nparam, void **params, int *ndims, int64_t **shapes, const char **, void *, void *) {
  if (nparam != 5) return 1;
  const int64_t c = shapes[0][0], rows = Size(ndims[1], shapes[1]) / c;
  DescendVjpCore(In(params, 0), In(params, 1), In(params, 2), rows, c, Out(params, 3), Out(params, 4));
  return 0;
}

// The relation network's first layer over all pairs: h[b,i,j] = relu(left[b,i] + right[b,j]).
// left, right [B,M,C] -> h [B,M,M,C].
int PairRelu(int nparam, void **params, int *, int64_t **shapes, const char **, void *, void *) {
  if (nparam != 3) return 1;
  const int64_t b_n = shapes[0][0], m_n = shapes[0][1], c = shapes[0][2];
  const float *left = In(params, 0), *right = In(params, 1);
  float *h = Out(params, 2);
  for (int64_t b = 0; b < b_n; b++)
    for (int64_t i = 0; i < m_n; i++) {
      const float *l = left + (b * m_n + i) * c;
      for (int64_t j = 0; j < m_n; j++) {
        const float *r = right + (b * m_n + j) * c;
        float *out = h + ((b * m_n + i) * m_n + j) * c;
        for (int64_t k = 0; k < c; k++) {
          const float v = l[k] + r[k];
          out[k] = v > 0.0f ? v : 0.0f;
        }
      }
    }
  return 0;
}

// PairRelu's gradient: h (its output), dOut [B,M,M,C] -> d_left = sum_j dOut * (h > 0),
// d_right = sum_i dOut * (h > 0), [B,M,C] each.
int PairReluVjp(int nparam, void **params, int *, int64_t **shapes, const char **, void *, void *) {
  if (nparam != 4) return 1;
  const int64_t b_n = shapes[0][0], m_n = shapes[0][1], c = shapes[0][3];
  const float *h = In(params, 0), *dout = In(params, 1);
  float *d_left = Out(params, 2), *d_right = Out(params, 3);
  std::memset(d_right, 0, sizeof(float) * b_n * m_n * c);
  for (int64_t b = 0; b < b_n; b++)
    for (int64_t i = 0; i < m_n; i++) {
      float *dl = d_left + (b * m_n + i) * c;
      for (int64_t k = 0; k < c; k++) dl[k] = 0.0f;
      for (int64_t j = 0; j < m_n; j++) {
        const int64_t base = ((b * m_n + i) * m_n + j) * c;
        float *dr = d_right + (b * m_n + j) * c;
        for (int64_t k = 0; k < c; k++) {
          const float g = h[base + k] > 0.0f ? dout[base + k] : 0.0f;
          dl[k] += g;
          dr[k] += g;
        }
      }
    }
  return 0;
}

// The latent inner loop's update for K samples per class: z + rate * (gz + h), the class
// part gz [B,N,1,L] the same for the K samples. z, rate [L], gz, h [B,N,K,L] -> [B,N,K,L].
int DescendCopies(int nparam, void **params, int *, int64_t **shapes, const char **, void *, void *) {
  if (nparam != 5) return 1;
  const int64_t groups = shapes[0][0] * shapes[0][1], k_n = shapes[0][2], c = shapes[0][3];
  const float *z = In(params, 0), *rate = In(params, 1), *gz = In(params, 2), *h = In(params, 3);
  float *out = Out(params, 4);
  for (int64_t g = 0; g < groups; g++)
    for (int64_t k = 0; k < k_n; k++) {
      const int64_t base = (g * k_n + k) * c;
      for (int64_t i = 0; i < c; i++) out[base + i] = z[base + i] + rate[i] * (gz[g * c + i] + h[base + i]);
    }
  return 0;
}

// DescendCopies' gradients other than z's (the cotangent itself): rate, gz, h, dOut ->
// d_rate [L] = sum dOut * (gz + h), d_gz [B,N,1,L] = sum_k dOut * rate, d_h = dOut * rate.
int DescendCopiesVjp(int nparam, void **params, int *, int64_t **shapes, const char **, void *, void *) {
  if (nparam != 7) return 1;
  const int64_t groups = shapes[2][0] * shapes[2][1], k_n = shapes[2][2], c = shapes[2][3];
  const float *rate = In(params, 0), *gz = In(params, 1), *h = In(params, 2), *dout = In(params, 3);
  float *d_rate = Out(params, 4), *d_gz = Out(params, 5), *d_h = Out(params, 6);
  std::vector<double> sum(c, 0.0);  // across tasks: double, so a split over ranks rounds alike
  for (int64_t g = 0; g < groups; g++) {
    float *dg = d_gz + g * c;
    for (int64_t i = 0; i < c; i++) dg[i] = 0.0f;
    for (int64_t k = 0; k < k_n; k++) {
      const int64_t base = (g * k_n + k) * c;
      for (int64_t i = 0; i < c; i++) {
        sum[i] += dout[base + i] * (gz[g * c + i] + h[base + i]);
        dg[i] += dout[base + i];
        d_h[base + i] = dout[base + i] * rate[i];
      }
    }
    for (int64_t i = 0; i < c; i++) dg[i] *= rate[i];
  }
  for (int64_t i = 0; i < c; i++) d_rate[i] = static_cast<float>(sum[i]);
  return 0;
}

// The K latent samples of each class and the one-sample KL estimate per task:
// std = max(exp(u) - 1, 1e-10), z = mean + std * eps, and
// kl[b] = mean over (n, k, l) of (z^2 - eps^2) / 2 - mean over (n, l) of log std.
// mean, u [B,N,1,L], eps [B,N,K,L] -> z [B,N,K,L], kl [B].
int LatentSample(int nparam, void **params, int *, int64_t **shapes, const char **, void *, void *) {
  if (nparam != 5) return 1;
  const int64_t b_n = shapes[2][0], n_n = shapes[2][1], k_n = shapes[2][2], c = shapes[2][3];
  const float *mean = In(params, 0), *u = In(params, 1), *eps = In(params, 2);
  float *z = Out(params, 3), *kl = Out(params, 4);
  for (int64_t b = 0; b < b_n; b++) {
    double square_sum = 0, log_sum = 0;
    for (int64_t n = 0; n < n_n; n++) {
      const int64_t g = b * n_n + n;
      for (int64_t i = 0; i < c; i++) {
        const float sd = std::max(Exp(u[g * c + i]) - 1.0f, 1e-10f);
        log_sum += std::log(sd);
        for (int64_t k = 0; k < k_n; k++) {
          const int64_t at = (g * k_n + k) * c + i;
          const float v = mean[g * c + i] + sd * eps[at];
          z[at] = v;
          square_sum += 0.5 * (static_cast<double>(v) * v - static_cast<double>(eps[at]) * eps[at]);
        }
      }
    }
    kl[b] = static_cast<float>(square_sum / (n_n * k_n * c) - log_sum / (n_n * c));
  }
  return 0;
}

// LatentSample's gradient: u, eps, z (its output), dZ [B,N,K,L], dKl [B] ->
// d_mean, d_u [B,N,1,L]. With dZ' = dZ + dKl * z / (N K L): d_mean = sum_k dZ',
// d_u = (sum_k dZ' * eps - dKl / (N L std)) * exp(u) where the clamp is inactive, else 0.
int LatentSampleVjp(int nparam, void **params, int *, int64_t **shapes, const char **, void *, void *) {
  if (nparam != 7) return 1;
  const int64_t b_n = shapes[1][0], n_n = shapes[1][1], k_n = shapes[1][2], c = shapes[1][3];
  const float *u = In(params, 0), *eps = In(params, 1), *z = In(params, 2), *dz = In(params, 3),
              *dkl = In(params, 4);
  float *d_mean = Out(params, 5), *d_u = Out(params, 6);
  for (int64_t b = 0; b < b_n; b++) {
    const float per_sample = dkl[b] / static_cast<float>(n_n * k_n * c);
    const float per_class = dkl[b] / static_cast<float>(n_n * c);
    for (int64_t n = 0; n < n_n; n++) {
      const int64_t g = b * n_n + n;
      for (int64_t i = 0; i < c; i++) {
        float to_mean = 0, to_std = 0;
        for (int64_t k = 0; k < k_n; k++) {
          const int64_t at = (g * k_n + k) * c + i;
          const float total = dz[at] + per_sample * z[at];
          to_mean += total;
          to_std += total * eps[at];
        }
        const float e = Exp(u[g * c + i]);
        const float sd = e - 1.0f;
        d_mean[g * c + i] = to_mean;
        d_u[g * c + i] = sd > 1e-10f ? (to_std - per_class / sd) * e : 0.0f;
      }
    }
  }
  return 0;
}

// The query set's mean cross-entropy and accuracy per task: x [B,M,D], one-hot y [B,M,N],
// w [B,N,D] -> ce [B], acc [B] (a query counts as correct when its label's logit is the
// first largest, as argmax), and grad [B,N,D] = dce[b]/dw[b] = (softmax(x w^T) - y)^T x / M,
// which the backward only scales by each task's cotangent: summed here while each query row
// is in cache, where a gradient operator would read the whole query set [B,M,D] again.
int QueryCe(int nparam, void **params, int *, int64_t **shapes, const char **, void *, void *) {
  if (nparam != 6) return 1;
  const int64_t b_n = shapes[0][0], m_n = shapes[0][1], d = shapes[0][2], c_n = shapes[1][2];
  const float *x = In(params, 0), *y = In(params, 1), *w = In(params, 2);
  float *ce = Out(params, 3), *acc = Out(params, 4), *grad = Out(params, 5);
  std::vector<float> logit(c_n), delta(c_n);
  std::memset(grad, 0, sizeof(float) * b_n * c_n * d);
  const float per_query = 1.0f / static_cast<float>(m_n);
  for (int64_t b = 0; b < b_n; b++) {
    double ce_sum = 0;
    int64_t correct = 0;
    for (int64_t m = 0; m < m_n; m++) {
      const float *xm = x + (b * m_n + m) * d, *ym = y + (b * m_n + m) * c_n;
      DotRows(xm, w + b * c_n * d, c_n, d, logit.data());
      int64_t top = 0;
      for (int64_t c = 0; c < c_n; c++) top = logit[c] > logit[top] ? c : top;
      float sum = 0;
      for (int64_t c = 0; c < c_n; c++) sum += (delta[c] = std::exp(logit[c] - logit[top]));
      const float log_sum = std::log(sum) + logit[top];
      for (int64_t c = 0; c < c_n; c++) {
        ce_sum -= ym[c] * (logit[c] - log_sum);
        delta[c] = (delta[c] / sum - ym[c]) * per_query;
      }
      correct += ym[top] > 0.5f;
      AxpyRows(delta.data(), xm, c_n, d, grad + b * c_n * d);
    }
    ce[b] = static_cast<float>(ce_sum / m_n);
    acc[b] = static_cast<float>(correct) / static_cast<float>(m_n);
  }
  return 0;
}

// The decoder's orthogonality penalty and its gradient in closed form (see
// model._orthogonality_cell): with U the rows of w [R,C] divided by their norms n and
// E = U U^T - I, penalty = mean(E^2) and dPenalty/dw_i = (T_i - (T_i . U_i) U_i) / n_i with
// T = 4 E U / R^2. w -> penalty [], grad [R,C].
int Orthogonality(int nparam, void **params, int *, int64_t **shapes, const char **, void *, void *) {
  if (nparam != 3) return 1;
  const int64_t r_n = shapes[0][0], c = shapes[0][1];
  const float *w = In(params, 0);
  float *penalty = Out(params, 1), *grad = Out(params, 2);
  std::vector<float> rows(r_n * c), norms(r_n), excess(r_n * r_n);
  for (int64_t i = 0; i < r_n; i++) {
    norms[i] = std::sqrt(Dot(w + i * c, w + i * c, c)) + 1e-32f;
    for (int64_t k = 0; k < c; k++) rows[i * c + k] = w[i * c + k] / norms[i];
  }
  double sum = 0;
  for (int64_t i = 0; i < r_n; i++)
    for (int64_t j = 0; j <= i; j++) {
      const float e = Dot(&rows[i * c], &rows[j * c], c) - (i == j ? 1.0f : 0.0f);
      excess[i * r_n + j] = excess[j * r_n + i] = e;
      sum += (i == j ? 1.0 : 2.0) * static_cast<double>(e) * e;
    }
  penalty[0] = static_cast<float>(sum / (r_n * r_n));
  const float scale = 4.0f / static_cast<float>(r_n * r_n);
  std::vector<float> toward(c);
  for (int64_t i = 0; i < r_n; i++) {
    for (int64_t k = 0; k < c; k++) toward[k] = 0.0f;
    for (int64_t j = 0; j < r_n; j++) {
      const float e = excess[i * r_n + j] * scale;
      const float *row = &rows[j * c];
      for (int64_t k = 0; k < c; k++) toward[k] += e * row[k];
    }
    const float *own = &rows[i * c];
    const float along = Dot(toward.data(), own, c);
    for (int64_t k = 0; k < c; k++) grad[i * c + k] = (toward[k] - along * own[k]) / norms[i];
  }
  return 0;
}

// The encoder penalty per task, mean over (n, k, l) of (z0 - z)^2 with z the inner loop's
// final latents under stop-gradient: z0, z [B,N,K,L] -> [B].
int EncoderPenalty(int nparam, void **params, int *, int64_t **shapes, const char **, void *, void *) {
  if (nparam != 3) return 1;
  const int64_t b_n = shapes[0][0], per = Size(4, shapes[0]) / b_n;
  const float *z0 = In(params, 0), *z = In(params, 1);
  float *out = Out(params, 2);
  for (int64_t b = 0; b < b_n; b++) {
    double sum = 0;
    for (int64_t i = b * per; i < (b + 1) * per; i++) sum += static_cast<double>(z0[i] - z[i]) * (z0[i] - z[i]);
    out[b] = static_cast<float>(sum / per);
  }
  return 0;
}

// EncoderPenalty's gradient with respect to z0: z0, z, dOut [B] -> 2 (z0 - z) dOut[b] / (N K L).
int EncoderPenaltyVjp(int nparam, void **params, int *, int64_t **shapes, const char **, void *, void *) {
  if (nparam != 4) return 1;
  const int64_t b_n = shapes[0][0], per = Size(4, shapes[0]) / b_n;
  const float *z0 = In(params, 0), *z = In(params, 1), *dout = In(params, 2);
  float *d = Out(params, 3);
  for (int64_t b = 0; b < b_n; b++) {
    const float scale = 2.0f * dout[b] / static_cast<float>(per);
    for (int64_t i = b * per; i < (b + 1) * per; i++) d[i] = scale * (z0[i] - z[i]);
  }
  return 0;
}

// The meta-loss of this rank's tasks: sum_b (ce + kl_weight kl + penalty_weight penalty)[b]
// * task_weight + orthogonality_weight * orthogonality * reg_weight. ce, kl, penalty [B],
// orthogonality, task_weight, reg_weight [], weights [3] = (kl_weight, penalty_weight,
// orthogonality_weight) -> total [].
int Total(int nparam, void **params, int *, int64_t **shapes, const char **, void *, void *) {
  if (nparam != 8) return 1;
  const int64_t b_n = shapes[0][0];
  const float *ce = In(params, 0), *kl = In(params, 1), *pen = In(params, 2), *wt = In(params, 6);
  const float orth = In(params, 3)[0], task_weight = In(params, 4)[0], reg_weight = In(params, 5)[0];
  double sum = 0;
  for (int64_t b = 0; b < b_n; b++) sum += ce[b] + wt[0] * kl[b] + wt[1] * pen[b];
  Out(params, 7)[0] = static_cast<float>(sum * task_weight + wt[2] * orth * reg_weight);
  return 0;
}

// Total's gradients: ce (for its shape), task_weight, reg_weight, weights [3], dTotal [] ->
// d_ce, d_kl, d_penalty [B], d_orthogonality [].
int TotalVjp(int nparam, void **params, int *, int64_t **shapes, const char **, void *, void *) {
  if (nparam != 9) return 1;
  const int64_t b_n = shapes[0][0];
  const float task_weight = In(params, 1)[0], reg_weight = In(params, 2)[0], dt = In(params, 4)[0];
  const float *wt = In(params, 3);
  float *d_ce = Out(params, 5), *d_kl = Out(params, 6), *d_pen = Out(params, 7);
  for (int64_t b = 0; b < b_n; b++) {
    d_ce[b] = dt * task_weight;
    d_kl[b] = dt * task_weight * wt[0];
    d_pen[b] = dt * task_weight * wt[1];
  }
  Out(params, 8)[0] = dt * wt[2] * reg_weight;
  return 0;
}

// One inner-loop decode for one weight sample per class (K = 1), merged: the weight
// sampling (Spread), ClassGrad at the sampled weights, then the chain rule's input to the
// decoder [grad | grad * dw_du]. o [B,N,1,2D], eps [B,N,1,D], offset [1],
// x [B,M,D], y [B,M,N] -> w [B,N,D], dw_du [B,N,1,D], grad [B,N,D], chained [B,N,1,2D].
int DecodeOne(int nparam, void **params, int *, int64_t **shapes, const char **, void *, void *) {
  if (nparam != 9) return 1;
  const Support s = SupportOf(shapes, params, 3);
  const int64_t d = s.d, rows = s.b_n * s.c_n;
  const float *o = In(params, 0), *eps = In(params, 1), offset = In(params, 2)[0];
  float *w = Out(params, 5), *dw_du = Out(params, 6), *grad = Out(params, 7), *chained = Out(params, 8);
  for (int64_t r = 0; r < rows; r++) {
    const float *mean = o + r * 2 * d, *u = mean + d;
    for (int64_t i = 0; i < d; i++) {
      float spread;
      Spread(u[i], eps[r * d + i], offset, &spread, &dw_du[r * d + i]);
      w[r * d + i] = mean[i] + spread;
    }
  }
  ClassGradCore(s, w, grad);
  for (int64_t r = 0; r < rows; r++)
    for (int64_t i = 0; i < d; i++) {
      chained[r * 2 * d + i] = grad[r * d + i];
      chained[r * 2 * d + d + i] = grad[r * d + i] * dw_du[r * d + i];
    }
  return 0;
}

// DecodeOne's gradient with respect to o: x, y, and its outputs w, dw_du, grad, then their
// cotangents d_w, d_dwdu, d_grad, d_chained -> d_o [B,N,1,2D] (back through the chain
// product, ClassGrad and the sampling in turn; both sampling outputs have the derivative
// dw_du with respect to u).
int DecodeOneVjp(int nparam, void **params, int *, int64_t **shapes, const char **, void *, void *) {
  if (nparam != 10) return 1;
  const Support s = SupportOf(shapes, params, 0);
  const int64_t d = s.d, rows = s.b_n * s.c_n;
  const float *w = In(params, 2), *dw_du = In(params, 3), *grad = In(params, 4), *d_w = In(params, 5),
              *d_dwdu = In(params, 6), *d_grad = In(params, 7), *d_chained = In(params, 8);
  float *d_o = Out(params, 9);
  std::vector<float> d_g(rows * d), d_dw(rows * d), to_w(d_w, d_w + rows * d);
  for (int64_t r = 0; r < rows; r++)
    for (int64_t i = 0; i < d; i++) {
      const int64_t k = r * d + i;
      const float upper = d_chained[r * 2 * d + d + i];
      d_g[k] = d_grad[k] + d_chained[r * 2 * d + i] + upper * dw_du[k];
      d_dw[k] = d_dwdu[k] + upper * grad[k];
    }
  ClassGradVjpCore(s, w, d_g.data(), to_w.data());
  for (int64_t r = 0; r < rows; r++)
    for (int64_t i = 0; i < d; i++) {
      const int64_t k = r * d + i;
      d_o[r * 2 * d + i] = to_w[k];
      d_o[r * 2 * d + d + i] = (to_w[k] + d_dw[k]) * dw_du[k];
    }
  return 0;
}

// One inner-loop decode for K weight samples per class, merged: the class mean of the K
// sampled weights (m + mean_k std_k * eps_k), ClassGrad at it, then each sample's chain
// rule input grad * dw_du. m [B,N,D], u, eps [B,N,K,D], offset [1],
// x [B,M,D], y [B,M,N] -> w_mean [B,N,D], dw_du [B,N,K,D], grad [B,N,D], scaled [B,N,K,D].
int DecodeCopies(int nparam, void **params, int *, int64_t **shapes, const char **, void *, void *) {
  if (nparam != 10) return 1;
  const Support s = SupportOf(shapes, params, 4);
  const int64_t groups = shapes[1][0] * shapes[1][1], k_n = shapes[1][2], d = shapes[1][3];
  const float *m = In(params, 0), *u = In(params, 1), *eps = In(params, 2), offset = In(params, 3)[0];
  float *w = Out(params, 6), *dw_du = Out(params, 7), *grad = Out(params, 8), *scaled = Out(params, 9);
  const float inv_k = 1.0f / static_cast<float>(k_n);
  for (int64_t g = 0; g < groups; g++) {
    float *wg = w + g * d;
    for (int64_t i = 0; i < d; i++) wg[i] = 0;
    for (int64_t k = 0; k < k_n; k++) {
      const int64_t base = (g * k_n + k) * d;
      for (int64_t i = 0; i < d; i++) {
        float spread;
        Spread(u[base + i], eps[base + i], offset, &spread, &dw_du[base + i]);
        wg[i] += spread;
      }
    }
    for (int64_t i = 0; i < d; i++) wg[i] = m[g * d + i] + wg[i] * inv_k;
  }
  ClassGradCore(s, w, grad);
  for (int64_t g = 0; g < groups; g++)
    for (int64_t k = 0; k < k_n; k++) {
      const int64_t base = (g * k_n + k) * d;
      for (int64_t i = 0; i < d; i++) scaled[base + i] = grad[g * d + i] * dw_du[base + i];
    }
  return 0;
}

// DecodeCopies' gradients: x, y, its outputs w_mean, dw_du, grad, then the cotangents d_w,
// d_dwdu, d_grad, d_scaled -> d_m [B,N,D], d_u [B,N,K,D].
int DecodeCopiesVjp(int nparam, void **params, int *, int64_t **shapes, const char **, void *, void *) {
  if (nparam != 11) return 1;
  const Support s = SupportOf(shapes, params, 0);
  const int64_t groups = shapes[3][0] * shapes[3][1], k_n = shapes[3][2], d = shapes[3][3];
  const float *w = In(params, 2), *dw_du = In(params, 3), *grad = In(params, 4), *d_w = In(params, 5),
              *d_dwdu = In(params, 6), *d_grad = In(params, 7), *d_scaled = In(params, 8);
  float *d_m = Out(params, 9), *d_u = Out(params, 10);
  std::vector<float> d_g(d_grad, d_grad + groups * d);
  for (int64_t g = 0; g < groups; g++)
    for (int64_t k = 0; k < k_n; k++) {
      const int64_t base = (g * k_n + k) * d;
      for (int64_t i = 0; i < d; i++) d_g[g * d + i] += d_scaled[base + i] * dw_du[base + i];
    }
  std::memcpy(d_m, d_w, sizeof(float) * groups * d);
  ClassGradVjpCore(s, w, d_g.data(), d_m);
  const float inv_k = 1.0f / static_cast<float>(k_n);
  for (int64_t g = 0; g < groups; g++)
    for (int64_t k = 0; k < k_n; k++) {
      const int64_t base = (g * k_n + k) * d;
      for (int64_t i = 0; i < d; i++) {
        const float to_dwdu = d_dwdu[base + i] + d_scaled[base + i] * grad[g * d + i];
        d_u[base + i] = (d_m[g * d + i] * inv_k + to_dwdu) * dw_du[base + i];
      }
    }
  return 0;
}

// One fine-tuning step followed by the next support gradient, merged: w2 = w + rate * g,
// g2 = ClassGrad at w2. w, g [B,N,D], rate [D], x [B,M,D], y [B,M,N] -> w2, g2 [B,N,D].
int FinetuneStep(int nparam, void **params, int *, int64_t **shapes, const char **, void *, void *) {
  if (nparam != 7) return 1;
  const Support s = SupportOf(shapes, params, 3);
  const int64_t c = s.d, rows = s.b_n * s.c_n;
  float *w2 = Out(params, 5);
  DescendCore(In(params, 0), In(params, 1), In(params, 2), rows, c, w2);
  ClassGradCore(s, w2, Out(params, 6));
  return 0;
}

// FinetuneStep's gradients other than w's: rate, g, x, y, w2 (its output), d_w2, d_g2 ->
// d_w, d_rate [D], d_g. With T = d_w2 + ClassGradVjp(w2, d_g2): d_w = T,
// d_rate = sum over rows of T * g, d_g = T * rate.
int FinetuneStepVjp(int nparam, void **params, int *, int64_t **shapes, const char **, void *, void *) {
  if (nparam != 10) return 1;
  const Support s = SupportOf(shapes, params, 2);
  const int64_t c = s.d, rows = s.b_n * s.c_n;
  float *d_w = Out(params, 7);
  std::memcpy(d_w, In(params, 5), sizeof(float) * rows * c);
  ClassGradVjpCore(s, In(params, 4), In(params, 6), d_w);
  DescendVjpCore(In(params, 0), In(params, 1), d_w, rows, c, Out(params, 8), Out(params, 9));
  return 0;
}

}  // extern "C"
