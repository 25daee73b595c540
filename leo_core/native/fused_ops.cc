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

// Row m of logits x[m] . w[c] for c < N, turned into softmax probabilities in p.
void SoftmaxRow(const float *x, const float *w, int64_t n_cls, int64_t d, float *p) {
  float top = -INFINITY;
  for (int64_t c = 0; c < n_cls; c++) {
    p[c] = Dot(x, w + c * d, d);
    top = p[c] > top ? p[c] : top;
  }
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

}  // namespace

extern "C" {

// g[b] = (softmax(x[b] w[b]^T) - y[b])^T x[b]: the gradient of the summed support
// cross-entropy with respect to the class weights. x [B,M,D], y [B,M,N], w [B,N,D] -> g [B,N,D].
int ClassGrad(int nparam, void **params, int *ndims, int64_t **shapes, const char **, void *, void *) {
  if (nparam != 4) return 1;
  const int64_t b_n = shapes[0][0], m_n = shapes[0][1], d = shapes[0][2], c_n = shapes[1][2];
  const float *x = In(params, 0), *y = In(params, 1), *w = In(params, 2);
  float *g = Out(params, 3);
  std::vector<float> p(c_n);
  std::memset(g, 0, sizeof(float) * Size(ndims[3], shapes[3]));
  for (int64_t b = 0; b < b_n; b++) {
    const float *wb = w + b * c_n * d;
    float *gb = g + b * c_n * d;
    for (int64_t m = 0; m < m_n; m++) {
      const float *xm = x + (b * m_n + m) * d;
      SoftmaxRow(xm, wb, c_n, d, p.data());
      for (int64_t c = 0; c < c_n; c++) {
        const float delta = p[c] - y[(b * m_n + m) * c_n + c];
        float *gc = gb + c * d;
        for (int64_t i = 0; i < d; i++) gc[i] += delta * xm[i];
      }
    }
  }
  return 0;
}

// The gradient of ClassGrad's output with respect to w, given its cotangent G [B,N,D]:
// with p = softmax(x w^T), dDelta = x G^T, dLogits = p * (dDelta - sum(p * dDelta)),
// dw = dLogits^T x. x, y, w, G -> dw [B,N,D].
int ClassGradVjp(int nparam, void **params, int *ndims, int64_t **shapes, const char **, void *, void *) {
  if (nparam != 5) return 1;
  const int64_t b_n = shapes[0][0], m_n = shapes[0][1], d = shapes[0][2], c_n = shapes[1][2];
  const float *x = In(params, 0), *w = In(params, 2), *cot = In(params, 3);
  float *dw = Out(params, 4);
  std::vector<float> p(c_n), dl(c_n);
  std::memset(dw, 0, sizeof(float) * Size(ndims[4], shapes[4]));
  for (int64_t b = 0; b < b_n; b++) {
    const float *wb = w + b * c_n * d, *gb = cot + b * c_n * d;
    float *dwb = dw + b * c_n * d;
    for (int64_t m = 0; m < m_n; m++) {
      const float *xm = x + (b * m_n + m) * d;
      SoftmaxRow(xm, wb, c_n, d, p.data());
      float along = 0;
      for (int64_t c = 0; c < c_n; c++) {
        dl[c] = Dot(xm, gb + c * d, d);
        along += p[c] * dl[c];
      }
      for (int64_t c = 0; c < c_n; c++) {
        const float coef = p[c] * (dl[c] - along);
        float *dwc = dwb + c * d;
        for (int64_t i = 0; i < d; i++) dwc[i] += coef * xm[i];
      }
    }
  }
  return 0;
}

// out = x + rate * g, rate [C] along the last axis of x, g [..., C].
int Descend(int nparam, void **params, int *ndims, int64_t **shapes, const char **, void *, void *) {
  if (nparam != 4) return 1;
  const int64_t c = shapes[1][0], rows = Size(ndims[0], shapes[0]) / c;
  const float *x = In(params, 0), *rate = In(params, 1), *g = In(params, 2);
  float *out = Out(params, 3);
  for (int64_t r = 0; r < rows; r++)
    for (int64_t i = 0; i < c; i++) out[r * c + i] = x[r * c + i] + rate[i] * g[r * c + i];
  return 0;
}

// Descend's gradients other than x's (which is the cotangent itself): rate, g, dout ->
// d_rate [C] = sum over rows of dout * g, d_g = dout * rate.
int DescendVjp(int nparam, void **params, int *ndims, int64_t **shapes, const char **, void *, void *) {
  if (nparam != 5) return 1;
  const int64_t c = shapes[0][0], rows = Size(ndims[1], shapes[1]) / c;
  const float *rate = In(params, 0), *g = In(params, 1), *dout = In(params, 2);
  float *d_rate = Out(params, 3), *d_g = Out(params, 4);
  std::memset(d_rate, 0, sizeof(float) * c);
  for (int64_t r = 0; r < rows; r++)
    for (int64_t i = 0; i < c; i++) {
      d_rate[i] += dout[r * c + i] * g[r * c + i];
      d_g[r * c + i] = dout[r * c + i] * rate[i];
    }
  return 0;
}

// One weight sample per class (K = 1) from the decoder's output o = [mean | u] [R, 2D]:
// w = mean + std(u) * eps and dw/du (see Spread). o, eps [R,D], offset [1] -> w, dw_du [R,D].
int SampleWeights(int nparam, void **params, int *ndims, int64_t **shapes, const char **, void *, void *) {
  if (nparam != 5) return 1;
  const int64_t d = shapes[1][ndims[1] - 1], rows = Size(ndims[1], shapes[1]) / d;
  const float *o = In(params, 0), *eps = In(params, 1), offset = In(params, 2)[0];
  float *w = Out(params, 3), *dw_du = Out(params, 4);
  for (int64_t r = 0; r < rows; r++) {
    const float *mean = o + r * 2 * d, *u = mean + d;
    for (int64_t i = 0; i < d; i++) {
      float spread;
      Spread(u[i], eps[r * d + i], offset, &spread, &dw_du[r * d + i]);
      w[r * d + i] = mean[i] + spread;
    }
  }
  return 0;
}

// SampleWeights' gradient: dw_du, dW, dDwdu [R,D] -> d_o [R, 2D] = [dW | (dW + dDwdu) * dw_du]
// (both outputs have the derivative dw_du with respect to u, see model._weight_sample_cell).
int SampleWeightsVjp(int nparam, void **params, int *ndims, int64_t **shapes, const char **, void *, void *) {
  if (nparam != 4) return 1;
  const int64_t d = shapes[0][ndims[0] - 1], rows = Size(ndims[0], shapes[0]) / d;
  const float *dw_du = In(params, 0), *d_w = In(params, 1), *d_dwdu = In(params, 2);
  float *d_o = Out(params, 3);
  for (int64_t r = 0; r < rows; r++)
    for (int64_t i = 0; i < d; i++) {
      const int64_t k = r * d + i;
      d_o[r * 2 * d + i] = d_w[k];
      d_o[r * 2 * d + d + i] = (d_w[k] + d_dwdu[k]) * dw_du[k];
    }
  return 0;
}

// K weight samples per class: the class mean of the sampled weights, from the decoded mean
// of the class-mean latent m [B,N,D] and the K samples' u [B,N,K,D]:
// w_mean = m + mean_k std(u_k) * eps_k, and dw/du per sample. m, u, eps, offset [1] ->
// w_mean [B,N,D], dw_du [B,N,K,D].
int SampleClassMean(int nparam, void **params, int *, int64_t **shapes, const char **, void *, void *) {
  if (nparam != 6) return 1;
  const int64_t groups = shapes[1][0] * shapes[1][1], k_n = shapes[1][2], d = shapes[1][3];
  const float *m = In(params, 0), *u = In(params, 1), *eps = In(params, 2), offset = In(params, 3)[0];
  float *w = Out(params, 4), *dw_du = Out(params, 5);
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
  return 0;
}

// SampleClassMean's gradient with respect to u (m's is the cotangent itself):
// dw_du [B,N,K,D], dWmean [B,N,D], dDwdu [B,N,K,D] -> d_u = (dWmean / K + dDwdu) * dw_du.
int SampleClassMeanVjp(int nparam, void **params, int *, int64_t **shapes, const char **, void *, void *) {
  if (nparam != 4) return 1;
  const int64_t groups = shapes[0][0] * shapes[0][1], k_n = shapes[0][2], d = shapes[0][3];
  const float *dw_du = In(params, 0), *d_w = In(params, 1), *d_dwdu = In(params, 2);
  float *d_u = Out(params, 3);
  const float inv_k = 1.0f / static_cast<float>(k_n);
  for (int64_t g = 0; g < groups; g++)
    for (int64_t k = 0; k < k_n; k++) {
      const int64_t base = (g * k_n + k) * d;
      for (int64_t i = 0; i < d; i++)
        d_u[base + i] = (d_w[g * d + i] * inv_k + d_dwdu[base + i]) * dw_du[base + i];
    }
  return 0;
}

// The chain rule's input to the decoder for one sample per class (K = 1):
// g, dw_du [R,D] -> [R, 2D] = [g | g * dw_du].
int ChainOne(int nparam, void **params, int *ndims, int64_t **shapes, const char **, void *, void *) {
  if (nparam != 3) return 1;
  const int64_t d = shapes[0][ndims[0] - 1], rows = Size(ndims[0], shapes[0]) / d;
  const float *g = In(params, 0), *dw_du = In(params, 1);
  float *out = Out(params, 2);
  for (int64_t r = 0; r < rows; r++)
    for (int64_t i = 0; i < d; i++) {
      out[r * 2 * d + i] = g[r * d + i];
      out[r * 2 * d + d + i] = g[r * d + i] * dw_du[r * d + i];
    }
  return 0;
}

// ChainOne's gradient: g, dw_du, dOut [R,2D] -> d_g = dOut[:D] + dOut[D:] * dw_du,
// d_dwdu = dOut[D:] * g.
int ChainOneVjp(int nparam, void **params, int *ndims, int64_t **shapes, const char **, void *, void *) {
  if (nparam != 5) return 1;
  const int64_t d = shapes[0][ndims[0] - 1], rows = Size(ndims[0], shapes[0]) / d;
  const float *g = In(params, 0), *dw_du = In(params, 1), *dout = In(params, 2);
  float *d_g = Out(params, 3), *d_dwdu = Out(params, 4);
  for (int64_t r = 0; r < rows; r++)
    for (int64_t i = 0; i < d; i++) {
      const int64_t k = r * d + i;
      const float upper = dout[r * 2 * d + d + i];
      d_g[k] = dout[r * 2 * d + i] + upper * dw_du[k];
      d_dwdu[k] = upper * g[k];
    }
  return 0;
}

// The chain rule's input to the decoder's u part for K samples per class: the class
// gradient g [B,N,1,D] times each sample's dw_du [B,N,K,D] -> [B,N,K,D].
int ChainCopies(int nparam, void **params, int *, int64_t **shapes, const char **, void *, void *) {
  if (nparam != 3) return 1;
  const int64_t groups = shapes[1][0] * shapes[1][1], k_n = shapes[1][2], d = shapes[1][3];
  const float *g = In(params, 0), *dw_du = In(params, 1);
  float *out = Out(params, 2);
  for (int64_t grp = 0; grp < groups; grp++)
    for (int64_t k = 0; k < k_n; k++) {
      const int64_t base = (grp * k_n + k) * d;
      for (int64_t i = 0; i < d; i++) out[base + i] = g[grp * d + i] * dw_du[base + i];
    }
  return 0;
}

// ChainCopies' gradient: g, dw_du, dOut -> d_g [B,N,1,D] = sum_k dOut * dw_du,
// d_dwdu = dOut * g.
int ChainCopiesVjp(int nparam, void **params, int *, int64_t **shapes, const char **, void *, void *) {
  if (nparam != 5) return 1;
  const int64_t groups = shapes[1][0] * shapes[1][1], k_n = shapes[1][2], d = shapes[1][3];
  const float *g = In(params, 0), *dw_du = In(params, 1), *dout = In(params, 2);
  float *d_g = Out(params, 3), *d_dwdu = Out(params, 4);
  for (int64_t grp = 0; grp < groups; grp++) {
    float *dg = d_g + grp * d;
    for (int64_t i = 0; i < d; i++) dg[i] = 0;
    for (int64_t k = 0; k < k_n; k++) {
      const int64_t base = (grp * k_n + k) * d;
      for (int64_t i = 0; i < d; i++) {
        dg[i] += dout[base + i] * dw_du[base + i];
        d_dwdu[base + i] = dout[base + i] * g[grp * d + i];
      }
    }
  }
  return 0;
}

}  // extern "C"
