// faceops::cuda (run by the CPU emulation of cuda_runtime.h in this folder)
// against faceops::cpu, the ground truth, on random batches: every op, both
// dtypes, every mining mode, squared or not, ties, several rounds of
// positives, batches of one row; the margin softmax under every margin and
// with rows whose sum of squares overflows; the triplet and pair losses
// against reference sets; every op whose gradients several blocks
// contribute to gives the same bits whatever order the blocks run in; and the
// float kernels that can run on the tensor cores, on them.
// Exit status 0 when all agree.
#include <cuda_runtime.h>  // the emulation: allocation and launch counters

#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "../fixed_point.cuh"  // the accumulator of semi-hard's and batch-all's gradients
#include "../pairwise.cuh"     // the Gram tiles, FMA and tensor cores
#include "faceops/faceops.h"

static int failures = 0;
// The triplet mining modes the triplet checks run (TripletMining values);
// run_tensor_cores narrows them to batch-hard, the one with tensor-core tiles.
static std::vector<int> g_modes = {0, 1, 2};
template <typename T>
double max_rel(const std::vector<T>& a, const std::vector<T>& b) {
  double worst = 0, scale = 0;
  for (size_t i = 0; i < a.size(); ++i) scale = std::max(scale, std::abs(double(b[i])));
  for (size_t i = 0; i < a.size(); ++i)
    worst = std::max(worst, std::abs(double(a[i]) - double(b[i])));
  return worst / std::max(scale, 1e-30);
}
template <typename T>
void expect(const std::string& what, double err, double tol = sizeof(T) == 4 ? 2e-4 : 1e-10) {
  const bool ok = err <= tol;
  if (!ok) ++failures;
  std::printf("%s %-60s %s err=%.3g\n", ok ? "ok  " : "FAIL", what.c_str(),
              sizeof(T) == 4 ? "f32" : "f64", err);
}
double rel(double a, double b) { return std::abs(a - b) / std::max(std::abs(b), 1e-12); }

template <typename T>
std::vector<T> randn(size_t count, std::mt19937& rng, double scale = 1) {
  std::normal_distribution<double> nd(0, scale);
  std::vector<T> v(count);
  for (auto& x : v) x = T(nd(rng));
  return v;
}

// dup: 0 none, 1 exact duplicate rows (distance ties), 2 near duplicates
// (distances recomputed from the differences).
template <typename T>
void test_triplet(int64_t n, int64_t d, int classes, int dup, std::mt19937& rng) {
  auto x = randn<T>(n * d, rng, 0.3);
  std::vector<int64_t> labels(n);
  for (auto& l : labels) l = rng() % classes;
  if (dup) {  // duplicated rows: exact distance ties
    for (int64_t i = 1; i < n; i += 3)
      for (int64_t k = 0; k < d; ++k)
        x[i * d + k] = x[(i - 1) * d + k] + (dup == 2 ? T(1e-3) * T(int(rng() % 7) - 3) : T(0));
  }
  for (int mode : g_modes)
    for (int sq = 0; sq < 2; ++sq) {
      T lc = 0, lg = 0;
      std::vector<T> dc(n * d, T(7)), dg(n * d, T(7));
      faceops::cpu::triplet_loss<T>(x.data(), labels.data(), n, d, T(0.2),
                                    faceops::TripletMining(mode), sq, &lc, dc.data());
      faceops::cuda::triplet_loss<T>(x.data(), labels.data(), n, d, T(0.2),
                                     faceops::TripletMining(mode), sq, &lg, dg.data(), nullptr);
      char buf[200];
      std::snprintf(buf, sizeof buf, "triplet mode=%d sq=%d n=%ld d=%ld C=%d dup=%d loss %.6g/%.6g",
                    mode, sq, (long)n, (long)d, classes, dup, (double)lg, (double)lc);
      expect<T>(buf, rel(lg, lc));
      std::snprintf(buf, sizeof buf, "  dx");
      expect<T>(buf, max_rel(dg, dc));
      T l2 = 0;
      faceops::cuda::triplet_loss<T>(x.data(), labels.data(), n, d, T(0.2),
                                     faceops::TripletMining(mode), sq, &l2, nullptr, nullptr);
      expect<T>("  loss without dx", rel(l2, lc));
    }
}

// Exact duplicates across labels (a negative equal to a positive, identical
// candidates in different tiles) with margin 0 and 0.2: the CPU miners follow
// the header's rules (tests/test_reference.py), the CUDA ones must agree.
template <typename T>
void test_triplet_duplicates(std::mt19937& rng) {
  int mismatches = 0, cases = 0;
  for (int trial = 0; trial < 60; ++trial) {
    const int64_t n = 4 + rng() % 77, d = std::vector<int64_t>{3, 17, 40}[rng() % 3];
    auto x = randn<T>(n * d, rng);
    std::vector<int64_t> labels(n);
    for (auto& l : labels) l = rng() % 4;
    for (int64_t k = 0; k < n / 2; ++k) {
      const int64_t from = rng() % n, to = rng() % n;
      for (int64_t e = 0; e < d; ++e) x[to * d + e] = x[from * d + e];
    }
    for (int mode : g_modes)
      for (int sq = 0; sq < 2; ++sq)
        for (T margin : {T(0), T(0.2)}) {
          T lc = 0, lg = 0;
          std::vector<T> dc(n * d), dg(n * d);
          faceops::cpu::triplet_loss<T>(x.data(), labels.data(), n, d, margin,
                                        faceops::TripletMining(mode), sq, &lc, dc.data());
          faceops::cuda::triplet_loss<T>(x.data(), labels.data(), n, d, margin,
                                         faceops::TripletMining(mode), sq, &lg, dg.data(), nullptr);
          const double tol = sizeof(T) == 4 ? 2e-4 : 1e-10;
          ++cases;
          if (rel(lg, lc) > tol || max_rel(dg, dc) > tol) ++mismatches;
        }
  }
  char buf[200];
  std::snprintf(buf, sizeof buf, "triplet duplicated rows: %d of %d cases differ", mismatches, cases);
  expect<T>(buf, mismatches);
}

// Squared norms past a quarter of the dtype's largest value: NaN loss and dx.
template <typename T>
void test_triplet_overflow(std::mt19937& rng) {
  const int64_t n = 12, d = 5;
  auto x = randn<T>(n * d, rng);
  for (auto& v : x) v *= sizeof(T) == 4 ? T(1e20) : T(1e160);
  std::vector<int64_t> labels(n);
  for (int64_t i = 0; i < n; ++i) labels[i] = i % 3;
  for (int mode = 0; mode < 3; ++mode) {
    T lc = 0, lg = 0;
    std::vector<T> dc(n * d), dg(n * d);
    faceops::cpu::triplet_loss<T>(x.data(), labels.data(), n, d, T(0.2), faceops::TripletMining(mode),
                                  true, &lc, dc.data());
    faceops::cuda::triplet_loss<T>(x.data(), labels.data(), n, d, T(0.2), faceops::TripletMining(mode),
                                   true, &lg, dg.data(), nullptr);
    bool all_nan = std::isnan(lc) && std::isnan(lg);
    for (int64_t e = 0; e < n * d; ++e) all_nan = all_nan && std::isnan(dc[e]) && std::isnan(dg[e]);
    char buf[200];
    std::snprintf(buf, sizeof buf, "triplet overflow mode=%d: NaN loss and dx on both", mode);
    expect<T>(buf, all_nan ? 0.0 : 1.0);
  }
}

template <typename T>
void test_pair(int64_t n, int64_t d, int classes, std::mt19937& rng) {
  auto x = randn<T>(n * d, rng, 0.3);
  std::vector<int64_t> labels(n);
  for (auto& l : labels) l = rng() % classes;
  T lc[2], lg[2];
  const T theta = T(1.5);  // by address: the CUDA kernel reads it on the device
  std::vector<T> dc(n * d, T(7)), dg(n * d, T(7));
  faceops::cpu::pair_loss<T>(x.data(), labels.data(), n, d, &theta, &lc[0], dc.data(), &lc[1]);
  faceops::cuda::pair_loss<T>(x.data(), labels.data(), n, d, &theta, &lg[0], dg.data(), &lg[1],
                              nullptr);
  char buf[200];
  std::snprintf(buf, sizeof buf, "pair n=%ld d=%ld loss %.6g/%.6g", (long)n, (long)d, (double)lg[0],
                (double)lc[0]);
  expect<T>(buf, rel(lg[0], lc[0]));
  expect<T>("  dtheta", rel(lg[1], lc[1]));
  expect<T>("  dx", max_rel(dg, dc));
}

template <typename T>
void test_center(int64_t n, int64_t d, int64_t classes, std::mt19937& rng) {
  auto x = randn<T>(n * d, rng);
  auto centers = randn<T>(classes * d, rng);
  std::vector<int64_t> labels(n);
  for (auto& l : labels)
    l = rng() % std::min<int64_t>(classes, classes > 100000 ? classes : 5 + n / 4);
  T lc, lg;
  std::vector<T> dxc(n * d, 7), dxg(n * d, 7), dcc(classes * d, 0), dcg(classes * d, 0);
  faceops::cpu::center_loss<T>(x.data(), labels.data(), centers.data(), n, d, classes, &lc,
                               dxc.data(), dcc.data());
  faceops::cuda::center_loss<T>(x.data(), labels.data(), centers.data(), n, d, classes, &lg,
                                dxg.data(), dcg.data(), nullptr);
  char buf[200];
  std::snprintf(buf, sizeof buf, "center n=%ld d=%ld C=%ld loss", (long)n, (long)d, (long)classes);
  expect<T>(buf, rel(lg, lc));
  expect<T>("  dx", max_rel(dxg, dxc));
  expect<T>("  dcenters", max_rel(dcg, dcc));
  std::vector<T> dirc(classes * d, 0), dirg(classes * d, 0);
  faceops::cpu::center_update_direction<T>(x.data(), labels.data(), centers.data(), n, d, classes,
                                           dirc.data());
  faceops::cuda::center_update_direction<T>(x.data(), labels.data(), centers.data(), n, d, classes,
                                            dirg.data(), nullptr);
  expect<T>("  direction", max_rel(dirg, dirc));
  auto cc = centers, cg = centers;
  faceops::cpu::center_update<T>(x.data(), labels.data(), cc.data(), n, d, classes, T(0.5));
  faceops::cuda::center_update<T>(x.data(), labels.data(), cg.data(), n, d, classes, T(0.5),
                                  nullptr);
  expect<T>("  center_update", max_rel(cg, cc));
}

template <typename T>
void test_rowwise(int64_t n, int64_t d, std::mt19937& rng) {
  auto a = randn<T>(n * d, rng, 0.3), b = randn<T>(n * d, rng, 0.3), c = randn<T>(n * d, rng, 0.3);
  std::vector<int64_t> sim(n);
  for (auto& s : sim) s = rng() % 2;
  for (int legacy = 0; legacy < 2; ++legacy) {
    T lc, lg;
    std::vector<T> dac(n * d), dbc(n * d), dag(n * d, 7), dbg(n * d, 7);
    faceops::cpu::contrastive_loss<T>(a.data(), b.data(), sim.data(), n, d, T(1), legacy, &lc,
                                      dac.data(), dbc.data());
    faceops::cuda::contrastive_loss<T>(a.data(), b.data(), sim.data(), n, d, T(1), legacy, &lg,
                                       dag.data(), dbg.data(), nullptr);
    char buf[200];
    std::snprintf(buf, sizeof buf, "contrastive legacy=%d n=%ld d=%ld", legacy, (long)n, (long)d);
    expect<T>(buf, rel(lg, lc));
    expect<T>("  da", max_rel(dag, dac));
    expect<T>("  db", max_rel(dbg, dbc));
  }
  T lc, lg;
  std::vector<T> g1(n * d), g2(n * d), g3(n * d), h1(n * d, 7), h2(n * d, 7), h3(n * d, 7);
  faceops::cpu::triplet_loss_explicit<T>(a.data(), b.data(), c.data(), n, d, T(0.3), &lc, g1.data(),
                                         g2.data(), g3.data());
  faceops::cuda::triplet_loss_explicit<T>(a.data(), b.data(), c.data(), n, d, T(0.3), &lg,
                                          h1.data(), h2.data(), h3.data(), nullptr);
  char buf[200];
  std::snprintf(buf, sizeof buf, "explicit triplet n=%ld d=%ld", (long)n, (long)d);
  expect<T>(buf, rel(lg, lc));
  expect<T>("  da", max_rel(h1, g1));
  expect<T>("  dp", max_rel(h2, g2));
  expect<T>("  dn", max_rel(h3, g3));
}

// Rows of x and their gradient through the normalisation; row 0 is zero
// (the norm floor) when zero_row.
template <typename T>
void test_normalize(int64_t n, int64_t d, bool zero_row, std::mt19937& rng) {
  auto x = randn<T>(n * d, rng), g = randn<T>(n * d, rng);
  if (zero_row) std::fill(x.begin(), x.begin() + d, T(0));
  std::vector<T> oc(n * d), og(n * d, 7), nc(n), ng(n, 7), dc(n * d), dg(n * d, 7);
  faceops::cpu::normalize_rows<T>(x.data(), n, d, oc.data(), nc.data());
  faceops::cuda::normalize_rows<T>(x.data(), n, d, og.data(), ng.data(), nullptr);
  char buf[200];
  std::snprintf(buf, sizeof buf, "normalize_rows n=%ld d=%ld zero_row=%d", (long)n, (long)d,
                int(zero_row));
  expect<T>(buf, max_rel(og, oc));
  expect<T>("  norms", max_rel(ng, nc));
  faceops::cpu::normalize_rows_backward<T>(oc.data(), nc.data(), g.data(), n, d, dc.data());
  faceops::cuda::normalize_rows_backward<T>(oc.data(), nc.data(), g.data(), n, d, dg.data(),
                                            nullptr);
  expect<T>("  backward", max_rel(dg, dc));
  auto in_place = x;  // out may alias x
  faceops::cuda::normalize_rows<T>(in_place.data(), n, d, in_place.data(), nullptr, nullptr);
  expect<T>("  in place", max_rel(in_place, oc));
}

struct Margins {
  const char* name;
  double m1, m2, m3;
};
constexpr Margins kMargins[] = {{"arcface", 1, 0.5, 0},
                                {"cosface", 1, 0, 0.35},
                                {"sphereface", 4, 0, 0},
                                {"combined", 1, 0.3, 0.2}};

// Random rows and class weights; labels repeat (row 1 copies row 0's), and
// every third row sits near the opposite of its class's weight (target angle
// past pi - m2, and past pi / m1 for SphereFace).  every_margin = false: the
// combined margin alone, with both gradients (the emulation is slow).
template <typename T>
void test_margin_softmax(int64_t n, int64_t d, int64_t classes, double scale, std::mt19937& rng,
                         bool every_margin = true) {
  auto x = randn<T>(n * d, rng), weight = randn<T>(classes * d, rng, 0.5);
  std::vector<int64_t> labels(n);
  for (auto& l : labels) l = rng() % classes;
  if (n > 1) labels[1] = labels[0];
  for (int64_t i = 2; i < n; i += 3) {
    auto noise = randn<T>(d, rng, 0.15);
    for (int64_t k = 0; k < d; ++k) x[i * d + k] = -weight[labels[i] * d + k] * T(2) + noise[k];
  }
  for (const Margins& m : kMargins) {
    if (!every_margin && std::string(m.name) != "combined") continue;
    const T s = T(scale), m1 = T(m.m1), m2 = T(m.m2), m3 = T(m.m3);
    T lc = 0, lg = 0, l2 = 0;
    std::vector<T> dxc(n * d), dwc(classes * d), dxg(n * d, 7), dwg(classes * d, 7),
        dw2(classes * d, 7);
    faceops::cpu::margin_softmax_loss<T>(x.data(), labels.data(), weight.data(), n, d, classes, s,
                                         m1, m2, m3, &lc, dxc.data(), dwc.data());
    faceops::cuda::margin_softmax_loss<T>(x.data(), labels.data(), weight.data(), n, d, classes, s,
                                          m1, m2, m3, &lg, dxg.data(), dwg.data(), nullptr);
    char buf[200];
    std::snprintf(buf, sizeof buf, "margin_softmax %s s=%g n=%ld d=%ld C=%ld loss %.6g/%.6g",
                  m.name, scale, (long)n, (long)d, (long)classes, (double)lg, (double)lc);
    expect<T>(buf, rel(lg, lc));
    expect<T>("  dx", max_rel(dxg, dxc));
    expect<T>("  dweight", max_rel(dwg, dwc));
    if (!every_margin) continue;
    faceops::cuda::margin_softmax_loss<T>(x.data(), labels.data(), weight.data(), n, d, classes, s,
                                          m1, m2, m3, &l2, nullptr, dw2.data(), nullptr);
    expect<T>("  loss and dweight without dx", std::max(rel(l2, lc), max_rel(dw2, dwc)));
    faceops::cuda::margin_softmax_loss<T>(x.data(), labels.data(), weight.data(), n, d, classes, s,
                                          m1, m2, m3, &l2, nullptr, nullptr, nullptr);
    expect<T>("  loss alone", rel(l2, lc));
  }
}

// A shard's forward on the CPU and under the emulation (outputs starting at
// 7): each one's log-sum-exp max + log(sum) and target logits, and lse_all,
// the CPU's log-sum-exp over "all shards" (this one's plus 2 like it).
template <typename T>
struct ShardForward {
  std::vector<T> lse_c, lse_g, lse_all, target_c, target_g;
};

template <typename T>
ShardForward<T> shard_forward(const std::vector<T>& x, const std::vector<int64_t>& labels,
                              const std::vector<T>& weight, int64_t n, int64_t d, int64_t classes,
                              T s, T m1, T m2, T m3) {
  std::vector<T> max_c(n), sum_c(n), max_g(n, 7), sum_g(n, 7);
  ShardForward<T> f{std::vector<T>(n), std::vector<T>(n), std::vector<T>(n), std::vector<T>(n),
                    std::vector<T>(n, 7)};
  faceops::cpu::margin_softmax_shard_forward<T>(x.data(), labels.data(), weight.data(), n, d,
                                                classes, s, m1, m2, m3, max_c.data(),
                                                sum_c.data(), f.target_c.data());
  faceops::cuda::margin_softmax_shard_forward<T>(x.data(), labels.data(), weight.data(), n, d,
                                                 classes, s, m1, m2, m3, max_g.data(),
                                                 sum_g.data(), f.target_g.data(), nullptr);
  for (int64_t i = 0; i < n; ++i) {
    f.lse_c[i] = max_c[i] + std::log(sum_c[i]);
    f.lse_g[i] = max_g[i] + std::log(sum_g[i]);
    f.lse_all[i] = f.lse_c[i] + T(std::log(3.0));
  }
  return f;
}

// The shard's backward from lse_all on the CPU (dxc, dwc) and under the
// emulation (dxg, dwg).
template <typename T>
void shard_backward(const std::vector<T>& x, const std::vector<int64_t>& labels,
                    const std::vector<T>& weight, int64_t n, int64_t d, int64_t classes, T s,
                    T m1, T m2, T m3, const std::vector<T>& lse_all, T loss_scale,
                    std::vector<T>& dxc, std::vector<T>& dwc, std::vector<T>& dxg,
                    std::vector<T>& dwg) {
  faceops::cpu::margin_softmax_shard_backward<T>(x.data(), labels.data(), weight.data(), n, d,
                                                 classes, s, m1, m2, m3, lse_all.data(),
                                                 loss_scale, dxc.data(), dwc.data());
  faceops::cuda::margin_softmax_shard_backward<T>(x.data(), labels.data(), weight.data(), n, d,
                                                  classes, s, m1, m2, m3, lse_all.data(),
                                                  loss_scale, dxg.data(), dwg.data(), nullptr);
}

// One shard's entries: labels in [-1, classes) (every fourth row's class on
// another shard); the shard's log-sum-exp max + log(sum) and target logits,
// then the backward from a log-sum-exp over "all shards" (this one's plus 2).
template <typename T>
void test_margin_softmax_shard(int64_t n, int64_t d, int64_t classes, std::mt19937& rng) {
  auto x = randn<T>(n * d, rng), weight = randn<T>(classes * d, rng, 0.5);
  std::vector<int64_t> labels(n);
  for (int64_t i = 0; i < n; ++i) labels[i] = i % 4 == 3 ? -1 : int64_t(rng() % classes);
  const Margins& m = kMargins[0];
  const T s = T(30), m1 = T(m.m1), m2 = T(m.m2), m3 = T(m.m3);
  const ShardForward<T> f = shard_forward(x, labels, weight, n, d, classes, s, m1, m2, m3);
  char buf[200];
  std::snprintf(buf, sizeof buf, "margin_softmax_shard n=%ld d=%ld C=%ld forward lse", (long)n,
                (long)d, (long)classes);
  expect<T>(buf, max_rel(f.lse_g, f.lse_c));
  expect<T>("  target logits (0 off the shard)", max_rel(f.target_g, f.target_c));
  std::vector<T> dxc(n * d), dwc(classes * d), dxg(n * d, 7), dwg(classes * d, 7);
  const T loss_scale = T(1) / T(3 * n);
  shard_backward(x, labels, weight, n, d, classes, s, m1, m2, m3, f.lse_all, loss_scale, dxc, dwc,
                 dxg, dwg);
  expect<T>("  backward dx", max_rel(dxg, dxc));
  expect<T>("  backward dweight", max_rel(dwg, dwc));
  std::vector<T> dw2(classes * d, 7);
  faceops::cuda::margin_softmax_shard_backward<T>(x.data(), labels.data(), weight.data(), n, d,
                                                  classes, s, m1, m2, m3, f.lse_all.data(),
                                                  loss_scale, nullptr, dw2.data(), nullptr);
  expect<T>("  backward dweight without dx", max_rel(dw2, dwc));
}

// Cosines uniform in [-1, 1], every third target near -1 (past pi - m2).
template <typename T>
void test_target_margin(int64_t n, int64_t classes, std::mt19937& rng) {
  std::uniform_real_distribution<double> ud(-1, 1);
  std::vector<T> cosine(n * classes), d_out = randn<T>(n * classes, rng);
  for (auto& c : cosine) c = T(ud(rng));
  std::vector<int64_t> labels(n);
  for (auto& l : labels) l = rng() % classes;
  for (int64_t i = 0; i < n; i += 3) cosine[i * classes + labels[i]] = T(-0.97 + 0.01 * (i % 5));
  for (const Margins& m : kMargins) {
    const T m1 = T(m.m1), m2 = T(m.m2), m3 = T(m.m3);
    std::vector<T> oc(n * classes), og(n * classes, 7), dc(n * classes), dg(n * classes, 7);
    faceops::cpu::target_margin_forward<T>(cosine.data(), labels.data(), n, classes, m1, m2, m3,
                                           oc.data());
    faceops::cuda::target_margin_forward<T>(cosine.data(), labels.data(), n, classes, m1, m2, m3,
                                            og.data(), nullptr);
    char buf[200];
    std::snprintf(buf, sizeof buf, "target_margin %s n=%ld C=%ld forward", m.name, (long)n,
                  (long)classes);
    expect<T>(buf, max_rel(og, oc));
    faceops::cpu::target_margin_backward<T>(cosine.data(), labels.data(), d_out.data(), n, classes,
                                            m1, m2, m3, dc.data());
    faceops::cuda::target_margin_backward<T>(cosine.data(), labels.data(), d_out.data(), n, classes,
                                             m1, m2, m3, dg.data(), nullptr);
    expect<T>("  backward", max_rel(dg, dc));
    auto out = cosine, grad = d_out;  // in place: out aliases cosine, d_cosine d_out
    faceops::cuda::target_margin_forward<T>(out.data(), labels.data(), n, classes, m1, m2, m3,
                                            out.data(), nullptr);
    faceops::cuda::target_margin_backward<T>(cosine.data(), labels.data(), grad.data(), n, classes,
                                             m1, m2, m3, grad.data(), nullptr);
    expect<T>("  in place", std::max(max_rel(out, oc), max_rel(grad, dc)));
  }
}

template <typename T>
void run_all(std::mt19937& rng) {
  test_rowwise<T>(1, 1, rng);
  test_rowwise<T>(37, 300, rng);
  test_center<T>(1, 3, 1, rng);
  test_center<T>(70, 19, 1000, rng);
  test_pair<T>(1, 5, 2, rng);
  test_pair<T>(2, 5, 1, rng);
  test_pair<T>(97, 37, 5, rng);
  test_pair<T>(97, 37, 100000, rng);  // nearly all pairs negative and inactive
  test_triplet<T>(1, 4, 2, 0, rng);
  test_triplet<T>(3, 4, 2, 0, rng);
  test_triplet<T>(70, 20, 3, 0, rng);  // many positives: several rounds
  test_triplet<T>(97, 33, 12, 0, rng);
  test_triplet<T>(66, 8, 6, 1, rng);     // ties
  test_triplet<T>(66, 8, 3, 2, rng);     // near duplicates
  test_triplet<T>(40, 6, 1, 0, rng);     // one class: no negatives
  test_triplet<T>(256, 16, 64, 0, rng);  // P x K = 64 x 4 on average
  test_triplet_duplicates<T>(rng);
  test_triplet_overflow<T>(rng);
  test_center<T>(50, 3, 1000000, rng);   // labels spread over a large table
  test_pair<T>(300, 6, 12, rng);         // 5 splits: 4 slices summed into dx
}

// A reference set: ref (m, d) whose first n rows are x (with x's labels) when
// `own` (self_index = 0..n-1, every third entry -1), else independent rows;
// dup: exact duplicate rows in ref (distance ties).
template <typename T>
struct ReferenceCase {
  std::vector<T> x, ref;
  std::vector<int64_t> labels, ref_labels, self_index;
};

template <typename T>
ReferenceCase<T> reference_case(int64_t n, int64_t m, int64_t d, int classes, bool own, bool dup,
                                std::mt19937& rng) {
  ReferenceCase<T> c;
  c.ref = randn<T>(m * d, rng, 0.3);
  c.ref_labels.resize(m);
  for (auto& l : c.ref_labels) l = rng() % classes;
  if (dup)
    for (int64_t j = 1; j < m; j += 3)
      for (int64_t k = 0; k < d; ++k) c.ref[j * d + k] = c.ref[(j - 1) * d + k];
  if (own) {
    c.x.assign(c.ref.begin(), c.ref.begin() + n * d);
    c.labels.assign(c.ref_labels.begin(), c.ref_labels.begin() + n);
    c.self_index.resize(n);
    for (int64_t i = 0; i < n; ++i) c.self_index[i] = i % 3 == 2 ? -1 : i;
  } else {
    c.x = randn<T>(n * d, rng, 0.3);
    c.labels.resize(n);
    for (auto& l : c.labels) l = rng() % classes;
  }
  return c;
}

template <typename T>
void test_triplet_ref(int64_t n, int64_t m, int64_t d, int classes, bool own, bool dup,
                      std::mt19937& rng) {
  const ReferenceCase<T> c = reference_case<T>(n, m, d, classes, own, dup, rng);
  const int64_t* self_index = own ? c.self_index.data() : nullptr;
  for (int mode : g_modes)
    for (int sq = 0; sq < 2; ++sq) {
      T lc = 0, lg = 0, cc = 0, cg = 0;
      std::vector<T> dxc(n * d, T(7)), dxg(n * d, T(7)), drc(m * d, T(7)), drg(m * d, T(7));
      faceops::cpu::triplet_loss_ref<T>(c.x.data(), c.labels.data(), n, d, c.ref.data(),
                                        c.ref_labels.data(), m, self_index, T(0.2),
                                        faceops::TripletMining(mode), sq, &lc, &cc, dxc.data(),
                                        drc.data());
      faceops::cuda::triplet_loss_ref<T>(c.x.data(), c.labels.data(), n, d, c.ref.data(),
                                         c.ref_labels.data(), m, self_index, T(0.2),
                                         faceops::TripletMining(mode), sq, &lg, &cg, dxg.data(),
                                         drg.data(), nullptr);
      char buf[200];
      std::snprintf(buf, sizeof buf,
                    "triplet_ref mode=%d sq=%d n=%ld m=%ld d=%ld C=%d own=%d dup=%d loss %.6g/%.6g",
                    mode, sq, (long)n, (long)m, (long)d, classes, own, dup, (double)lg, (double)lc);
      expect<T>(buf, rel(lg, lc));
      expect<T>("  count", rel(cg, cc));
      expect<T>("  dx", max_rel(dxg, dxc));
      expect<T>("  dref", max_rel(drg, drc));
      // One gradient at a time: the other one null (written through, it would crash here).
      std::vector<T> dx_only(n * d, T(7)), dref_only(m * d, T(7));
      faceops::cuda::triplet_loss_ref<T>(c.x.data(), c.labels.data(), n, d, c.ref.data(),
                                         c.ref_labels.data(), m, self_index, T(0.2),
                                         faceops::TripletMining(mode), sq, &lg, &cg, dx_only.data(),
                                         nullptr, nullptr);
      faceops::cuda::triplet_loss_ref<T>(c.x.data(), c.labels.data(), n, d, c.ref.data(),
                                         c.ref_labels.data(), m, self_index, T(0.2),
                                         faceops::TripletMining(mode), sq, nullptr, nullptr,
                                         nullptr, dref_only.data(), nullptr);
      expect<T>("  dx without dref", max_rel(dx_only, dxc));
      expect<T>("  dref without dx", max_rel(dref_only, drc));
    }
}

template <typename T>
void test_pair_ref(int64_t n, int64_t m, int64_t d, int classes, bool own, std::mt19937& rng) {
  const ReferenceCase<T> c = reference_case<T>(n, m, d, classes, own, false, rng);
  const int64_t* self_index = own ? c.self_index.data() : nullptr;
  T lc[3], lg[3];  // loss, count, dtheta
  const T theta = T(1.5);
  std::vector<T> dxc(n * d, T(7)), dxg(n * d, T(7)), drc(m * d, T(7)), drg(m * d, T(7));
  faceops::cpu::pair_loss_ref<T>(c.x.data(), c.labels.data(), n, d, c.ref.data(),
                                 c.ref_labels.data(), m, self_index, &theta, &lc[0], &lc[1],
                                 dxc.data(), drc.data(), &lc[2]);
  faceops::cuda::pair_loss_ref<T>(c.x.data(), c.labels.data(), n, d, c.ref.data(),
                                  c.ref_labels.data(), m, self_index, &theta, &lg[0], &lg[1],
                                  dxg.data(), drg.data(), &lg[2], nullptr);
  char buf[200];
  std::snprintf(buf, sizeof buf, "pair_ref n=%ld m=%ld d=%ld own=%d loss %.6g/%.6g", (long)n,
                (long)m, (long)d, own, (double)lg[0], (double)lc[0]);
  expect<T>(buf, rel(lg[0], lc[0]));
  expect<T>("  count", rel(lg[1], lc[1]));
  expect<T>("  dtheta", rel(lg[2], lc[2]));
  expect<T>("  dx", max_rel(dxg, dxc));
  expect<T>("  dref", max_rel(drg, drc));
  // One gradient at a time: the other one null (written through, it would crash here).
  std::vector<T> dx_only(n * d, T(7)), dref_only(m * d, T(7));
  faceops::cuda::pair_loss_ref<T>(c.x.data(), c.labels.data(), n, d, c.ref.data(),
                                  c.ref_labels.data(), m, self_index, &theta, nullptr, nullptr,
                                  dx_only.data(), nullptr, nullptr, nullptr);
  faceops::cuda::pair_loss_ref<T>(c.x.data(), c.labels.data(), n, d, c.ref.data(),
                                  c.ref_labels.data(), m, self_index, &theta, nullptr, nullptr,
                                  nullptr, dref_only.data(), nullptr, nullptr);
  expect<T>("  dx without dref", max_rel(dx_only, dxc));
  expect<T>("  dref without dx", max_rel(dref_only, drc));
}

template <typename T>
void run_reference_sets(std::mt19937& rng) {
  test_pair_ref<T>(1, 1, 5, 2, true, rng);  // the only pair is the own copy: loss 0, count 0
  test_pair_ref<T>(5, 9, 5, 2, false, rng);
  test_pair_ref<T>(97, 130, 37, 5, true, rng);
  test_triplet_ref<T>(1, 1, 4, 2, true, false, rng);
  test_triplet_ref<T>(3, 7, 4, 2, false, false, rng);
  test_triplet_ref<T>(70, 90, 20, 3, true, false, rng);  // many positives: several rounds
  test_triplet_ref<T>(40, 100, 9, 12, false, false, rng);
  test_triplet_ref<T>(66, 80, 8, 6, true, true, rng);  // ties
  test_triplet_ref<T>(33, 300, 16, 64, true, false, rng);
  test_pair_ref<T>(300, 260, 6, 12, false, rng);  // 5 splits
}

// Runs op (which returns every output of one call, named) with the blocks of
// each grid in launch order and again in reverse order, and counts per output
// the elements whose bits differ: a result that blocks add into in the order
// they happen to run (float atomics) shows up here, since float addition is
// not associative.  Outputs start at 0.25 where they are accumulated into.
template <typename T>
using NamedOutputs = std::vector<std::pair<std::string, std::vector<T>>>;
template <typename T, typename Op>
void expect_block_order_independent(const std::string& what, Op op) {
  const NamedOutputs<T> forward = op();
  g_reverse_blocks = true;
  const NamedOutputs<T> reversed = op();
  g_reverse_blocks = false;
  for (size_t o = 0; o < forward.size(); ++o) {
    const std::vector<T>&a = forward[o].second, &b = reversed[o].second;
    long differing = 0;
    for (size_t e = 0; e < a.size(); ++e) differing += std::memcmp(&a[e], &b[e], sizeof(T)) != 0;
    char buf[200];
    std::snprintf(buf, sizeof buf, "%s %s: %ld of %zu differ in reverse block order",
                  what.c_str(), forward[o].first.c_str(), differing, a.size());
    expect<T>(buf, double(differing));
  }
}

// Every gradient that several blocks contribute to, at sizes where each
// element gets at least three contributions (two would commute exactly):
// n = 300 splits the pair loss's and batch-all's candidates over 5 blocks.
template <typename T>
void run_block_order(std::mt19937& rng, bool with_centers = true) {
  const int64_t n = 300, m = 260, d = 6, classes = 12;
  const ReferenceCase<T> c = reference_case<T>(n, m, d, classes, false, false, rng);
  const T theta = T(1.5);
  expect_block_order_independent<T>("pair n=300", [&] {
    std::vector<T> dx(n * d), scalars(2);
    faceops::cuda::pair_loss<T>(c.x.data(), c.labels.data(), n, d, &theta, &scalars[0], dx.data(),
                                &scalars[1], nullptr);
    return NamedOutputs<T>{{"dx", dx}, {"loss, dtheta", scalars}};
  });
  expect_block_order_independent<T>("pair_ref n=300 m=260", [&] {
    std::vector<T> dx(n * d), dref(m * d), scalars(3);
    faceops::cuda::pair_loss_ref<T>(c.x.data(), c.labels.data(), n, d, c.ref.data(),
                                    c.ref_labels.data(), m, nullptr, &theta, &scalars[0],
                                    &scalars[1], dx.data(), dref.data(), &scalars[2], nullptr);
    return NamedOutputs<T>{{"dx", dx}, {"dref", dref}, {"loss, count, dtheta", scalars}};
  });
  for (int mode : g_modes) {
    const auto mining = faceops::TripletMining(mode);
    expect_block_order_independent<T>("triplet mode=" + std::to_string(mode) + " n=300", [&] {
      std::vector<T> dx(n * d), loss(1);
      faceops::cuda::triplet_loss<T>(c.x.data(), c.labels.data(), n, d, T(0.2), mining, false,
                                     &loss[0], dx.data(), nullptr);
      return NamedOutputs<T>{{"dx", dx}, {"loss", loss}};
    });
    expect_block_order_independent<T>(
        "triplet_ref mode=" + std::to_string(mode) + " n=300 m=260", [&] {
          std::vector<T> dx(n * d), dref(m * d), scalars(2);
          faceops::cuda::triplet_loss_ref<T>(c.x.data(), c.labels.data(), n, d, c.ref.data(),
                                             c.ref_labels.data(), m, nullptr, T(0.2), mining,
                                             false, &scalars[0], &scalars[1], dx.data(),
                                             dref.data(), nullptr);
          return NamedOutputs<T>{{"dx", dx}, {"dref", dref}, {"loss, count", scalars}};
        });
  }
  if (!with_centers) return;
  auto centers = randn<T>(classes * d, rng);
  expect_block_order_independent<T>("center n=300", [&] {
    std::vector<T> dx(n * d), dcenters(classes * d, T(0.25)), loss(1);
    faceops::cuda::center_loss<T>(c.x.data(), c.labels.data(), centers.data(), n, d, classes,
                                  &loss[0], dx.data(), dcenters.data(), nullptr);
    return NamedOutputs<T>{{"dx", dx}, {"dcenters", dcenters}, {"loss", loss}};
  });
  expect_block_order_independent<T>("center_update_direction n=300", [&] {
    std::vector<T> direction(classes * d, T(0.25));
    faceops::cuda::center_update_direction<T>(c.x.data(), c.labels.data(), centers.data(), n, d,
                                              classes, direction.data(), nullptr);
    return NamedOutputs<T>{{"direction", direction}};
  });
  expect_block_order_independent<T>("center_update n=300", [&] {
    auto moved = centers;
    faceops::cuda::center_update<T>(c.x.data(), c.labels.data(), moved.data(), n, d, classes,
                                    T(0.5), nullptr);
    return NamedOutputs<T>{{"centers", moved}};
  });
}

// Block b adds terms[b] into element element_of[b].
template <typename T>
__global__ void add_terms_kernel(faceops::cuda::detail::FixedPointSum<T> sum, const T* terms,
                                 const int* element_of) {
  if (threadIdx.x == 0) sum.add(element_of[blockIdx.x], terms[blockIdx.x]);
}

// fixed_point.cuh on terms of a few to 2^100 units 2^e (2^60 with one
// word) that cancel and cross zero: the words are the same in both block
// orders, and the values are the exact sums of the rounded terms: bit for bit
// where the sum fits an int64 (a lost carry or a cancellation against the
// high word would show), within the final rounding to double elsewhere.
template <typename T>
void test_fixed_point(int words_per_element) {
  namespace d = faceops::cuda::detail;
  const int e = -40;
  const double big = words_per_element == 1 ? 0x1p60 : 0x1p100;
  const std::vector<std::vector<double>> units = {
      {big, 3, -big, -5, 0.5, 1.5, -2.5, 0x1p57, -0x1p57 - 2048, big / 3, -big / 3},
      {big / 3, -big / 7, 0x1p40 + 1, -7, 12, -big, 0x1p52 + 1},
      {-0x1p61, 0x1p61 + 4096, -0x1p52, 0x1p52, -1, 11, -big / 9, big / 9}};
  const int elements = int(units.size());
  std::vector<T> terms;
  std::vector<int> element_of;
  std::vector<__int128> exact(elements, 0);  // the sums of the rounded terms
  for (int i = 0; i < elements; ++i)
    for (double u : units[i]) {
      terms.push_back(T(std::ldexp(u, e)));
      element_of.push_back(i);
      exact[i] += static_cast<__int128>(std::nearbyint(std::ldexp(double(terms.back()), -e)));
    }
  std::vector<unsigned long long> words[2];
  for (int reversed = 0; reversed < 2; ++reversed) {
    words[reversed].assign(elements * words_per_element, 0);
    g_reverse_blocks = reversed;
    d::launch("add_terms_kernel", add_terms_kernel<T>, int64_t(terms.size()), nullptr,
              d::FixedPointSum<T>{words[reversed].data(), elements, words_per_element, &e},
              terms.data(), element_of.data());
    g_reverse_blocks = false;
  }
  const std::string what = "fixed point, " + std::to_string(words_per_element) + " word(s): ";
  expect<T>(what + "words differ in reverse block order", double(words[0] != words[1]));
  const d::FixedPointSum<T> sum{words[0].data(), elements, words_per_element, &e};
  for (int i = 0; i < elements; ++i) {
    const double want = std::ldexp(double(exact[i]), e), got = sum.value(i);
    const bool fits = exact[i] == static_cast<long long>(exact[i]);
    char buf[200];
    std::snprintf(buf, sizeof buf, "%selement %d, %s sum %.17g", what.c_str(), i,
                  fits ? "int64" : "wider", double(exact[i]));
    expect<T>(buf, fits ? double(got != want) : rel(got, want) > 0x1p-52);
  }
}

// Rows of `rows` (count d) scaled by 2^(exponents[r]) in place; the
// exponents pass the point where the row's sum of squares overflows.
template <typename T>
void scale_rows(std::vector<T>& matrix, int64_t d, const std::vector<int64_t>& rows,
                const std::vector<int>& exponents) {
  for (size_t r = 0; r < rows.size(); ++r)
    for (int64_t k = 0; k < d; ++k)
      matrix[rows[r] * d + k] = std::ldexp(matrix[rows[r] * d + k], exponents[r]);
}

// Largest over the rows of |a - b| relative to the row's largest |b|, so that
// rows scaled down by 2^-124 count as much as the others.  A NaN in one and
// not the other is an error of inf; NaNs in both agree.
template <typename T>
double max_row_rel(const std::vector<T>& a, const std::vector<T>& b, int64_t d) {
  double worst = 0;
  for (size_t i = 0; i * d < b.size(); ++i) {
    double error = 0, scale = 0;
    for (int64_t k = 0; k < d; ++k) {
      const double x = a[i * d + k], y = b[i * d + k];
      if (std::isnan(x) != std::isnan(y)) return INFINITY;
      if (std::isnan(x)) continue;
      error = std::max(error, std::abs(x - y));
      scale = std::max(scale, std::abs(y));
    }
    worst = std::max(worst, error / std::max(scale, 1e-300));
  }
  return worst;
}

// Rows whose sum of squares overflows while their norm does not (float32
// entries near 2^70 and 2^124, float64 near 2^530 and 2^1020), in x and in
// weight: the CUDA kernels against the CPU ones, and both against the
// unscaled rows (the loss is invariant to the rows' scales; a scaled row's
// gradient is the unscaled one over the factor).  A row whose norm lies past
// the dtype's range gives NaN: its normalised row, the loss, its gradient.
template <typename T>
void test_overflowing_norms(int64_t n, int64_t d, int64_t classes, std::mt19937& rng) {
  const bool f32 = sizeof(T) == 4;
  const std::vector<int> exponents = f32 ? std::vector<int>{70, 124, 100}
                                         : std::vector<int>{530, 1020, 700};
  const std::vector<int64_t> scaled_x = {0, 3, n - 1}, scaled_w = {1, 2, classes - 1};
  auto x = randn<T>(n * d, rng), weight = randn<T>(classes * d, rng, 0.5), g = randn<T>(n * d, rng);
  std::vector<int64_t> labels(n);
  for (int64_t i = 0; i < n; ++i) labels[i] = i % classes;  // the scaled classes are targets
  auto big_x = x, big_w = weight;
  scale_rows(big_x, d, scaled_x, exponents);
  scale_rows(big_w, d, scaled_w, exponents);
  char buf[200];
  std::snprintf(buf, sizeof buf, "overflowing norms n=%ld d=%ld C=%ld", (long)n, (long)d,
                (long)classes);
  std::printf("     %s\n", buf);

  // normalize_rows: x̂ as of the unscaled rows, the norms scaled by the factors.
  std::vector<T> unit(n * d), norms(n), oc(n * d), og(n * d, 7), nc(n), ng(n, 7);
  faceops::cpu::normalize_rows<T>(x.data(), n, d, unit.data(), norms.data());
  faceops::cpu::normalize_rows<T>(big_x.data(), n, d, oc.data(), nc.data());
  faceops::cuda::normalize_rows<T>(big_x.data(), n, d, og.data(), ng.data(), nullptr);
  auto big_norms = norms;
  scale_rows(big_norms, 1, scaled_x, exponents);
  expect<T>("  normalize_rows cuda/cpu", max_row_rel(og, oc, d));
  expect<T>("  normalize_rows cpu/unscaled", max_row_rel(oc, unit, d));
  expect<T>("  norms cuda/cpu", max_row_rel(ng, nc, 1));
  expect<T>("  norms cpu/unscaled x factor", max_row_rel(nc, big_norms, 1));
  std::vector<T> dc(n * d), dg(n * d, 7), d_unit(n * d);
  faceops::cpu::normalize_rows_backward<T>(unit.data(), norms.data(), g.data(), n, d, d_unit.data());
  faceops::cpu::normalize_rows_backward<T>(oc.data(), nc.data(), g.data(), n, d, dc.data());
  faceops::cuda::normalize_rows_backward<T>(oc.data(), nc.data(), g.data(), n, d, dg.data(),
                                            nullptr);
  scale_rows(d_unit, d, scaled_x, {-exponents[0], -exponents[1], -exponents[2]});
  expect<T>("  normalize_rows backward cuda/cpu", max_row_rel(dg, dc, d));
  expect<T>("  normalize_rows backward cpu/unscaled over factor", max_row_rel(dc, d_unit, d));
  auto in_place = big_x;  // out may alias x: the recomputed norm reads the row before any write
  faceops::cuda::normalize_rows<T>(in_place.data(), n, d, in_place.data(), nullptr, nullptr);
  expect<T>("  normalize_rows in place", max_row_rel(in_place, oc, d));

  // The loss, with scaled rows in x and in weight at once.
  const Margins& m = kMargins[3];
  const T s = T(30), m1 = T(m.m1), m2 = T(m.m2), m3 = T(m.m3);
  T l0 = 0, lc = 0, lg = 0;
  std::vector<T> dx0(n * d), dw0(classes * d), dxc(n * d), dwc(classes * d), dxg(n * d, 7),
      dwg(classes * d, 7);
  faceops::cpu::margin_softmax_loss<T>(x.data(), labels.data(), weight.data(), n, d, classes, s,
                                       m1, m2, m3, &l0, dx0.data(), dw0.data());
  faceops::cpu::margin_softmax_loss<T>(big_x.data(), labels.data(), big_w.data(), n, d, classes,
                                       s, m1, m2, m3, &lc, dxc.data(), dwc.data());
  faceops::cuda::margin_softmax_loss<T>(big_x.data(), labels.data(), big_w.data(), n, d, classes,
                                        s, m1, m2, m3, &lg, dxg.data(), dwg.data(), nullptr);
  scale_rows(dx0, d, scaled_x, {-exponents[0], -exponents[1], -exponents[2]});
  scale_rows(dw0, d, scaled_w, {-exponents[0], -exponents[1], -exponents[2]});
  std::snprintf(buf, sizeof buf, "  margin_softmax loss %.6g (cuda) %.6g (cpu) %.6g (unscaled)",
                (double)lg, (double)lc, (double)l0);
  expect<T>(buf, std::max(rel(lg, lc), rel(lc, l0)));
  expect<T>("  margin_softmax dx cuda/cpu", max_row_rel(dxg, dxc, d));
  expect<T>("  margin_softmax dweight cuda/cpu", max_row_rel(dwg, dwc, d));
  expect<T>("  margin_softmax dx cpu/unscaled over factor", max_row_rel(dxc, dx0, d));
  expect<T>("  margin_softmax dweight cpu/unscaled over factor", max_row_rel(dwc, dw0, d));

  // The shard entries, on the same rows (every fourth row's class elsewhere).
  auto local = labels;
  for (int64_t i = 3; i < n; i += 4) local[i] = -1;
  const ShardForward<T> f = shard_forward(big_x, local, big_w, n, d, classes, s, m1, m2, m3);
  expect<T>("  shard forward lse cuda/cpu", max_row_rel(f.lse_g, f.lse_c, 1));
  expect<T>("  shard forward target logits cuda/cpu", max_rel(f.target_g, f.target_c));
  const T loss_scale = T(1) / T(3 * n);
  std::fill(dxg.begin(), dxg.end(), T(7));
  std::fill(dwg.begin(), dwg.end(), T(7));
  shard_backward(big_x, local, big_w, n, d, classes, s, m1, m2, m3, f.lse_all, loss_scale, dxc, dwc,
                 dxg, dwg);
  expect<T>("  shard backward dx cuda/cpu", max_row_rel(dxg, dxc, d));
  expect<T>("  shard backward dweight cuda/cpu", max_row_rel(dwg, dwc, d));

  // Norms past the range: every entry of x's row 1 and weight's row 0 at max / 2.
  auto huge_x = x, huge_w = weight;
  std::fill(huge_x.begin() + d, huge_x.begin() + 2 * d, std::numeric_limits<T>::max() / 2);
  std::fill(huge_w.begin(), huge_w.begin() + d, std::numeric_limits<T>::max() / 2);
  faceops::cpu::normalize_rows<T>(huge_x.data(), n, d, oc.data(), nc.data());
  faceops::cuda::normalize_rows<T>(huge_x.data(), n, d, og.data(), ng.data(), nullptr);
  bool nan_row = true;
  for (int64_t k = 0; k < d; ++k) nan_row = nan_row && std::isnan(og[d + k]) && std::isnan(oc[d + k]);
  expect<T>("  norm past the range: NaN row (cuda/cpu)",
            nan_row && std::isinf(ng[1]) ? max_row_rel(og, oc, d) : INFINITY);
  faceops::cpu::margin_softmax_loss<T>(huge_x.data(), labels.data(), weight.data(), n, d, classes,
                                       s, m1, m2, m3, &lc, dxc.data(), nullptr);
  faceops::cuda::margin_softmax_loss<T>(huge_x.data(), labels.data(), weight.data(), n, d,
                                        classes, s, m1, m2, m3, &lg, dxg.data(), nullptr, nullptr);
  expect<T>("  x norm past the range: NaN loss and dx row (cuda, cpu)",
            std::isnan(lc) && std::isnan(lg) && std::isnan(dxc[d]) && std::isnan(dxg[d])
                ? 0
                : INFINITY);
  faceops::cpu::margin_softmax_loss<T>(x.data(), labels.data(), huge_w.data(), n, d, classes, s,
                                       m1, m2, m3, &lc, nullptr, dwc.data());
  faceops::cuda::margin_softmax_loss<T>(x.data(), labels.data(), huge_w.data(), n, d, classes, s,
                                        m1, m2, m3, &lg, nullptr, dwg.data(), nullptr);
  expect<T>("  weight norm past the range: NaN loss and dweight row (cuda, cpu)",
            std::isnan(lc) && std::isnan(lg) && std::isnan(dwc[0]) && std::isnan(dwg[0])
                ? 0
                : INFINITY);
}

// On a generator of their own, so that the other checks keep their inputs.
template <typename T>
void run_margin_softmax(std::mt19937& rng) {
  test_normalize<T>(1, 1, false, rng);
  test_normalize<T>(37, 300, true, rng);
  test_target_margin<T>(1, 1, rng);
  test_target_margin<T>(29, 77, rng);
  test_margin_softmax<T>(1, 5, 1, 30, rng);  // the only class is the target: loss 0
  test_margin_softmax<T>(1, 33, 70, 30, rng);
  test_margin_softmax<T>(7, 20, 1, 64, rng);
  test_margin_softmax<T>(37, 50, 130, 30, rng);  // C, d, n off the tile sizes
  test_margin_softmax<T>(70, 128, 64, 64, rng);
  test_margin_softmax<T>(150, 17, 5, 30, rng);  // labels repeat: n >> C
  test_margin_softmax_shard<T>(1, 5, 1, rng);
  test_margin_softmax_shard<T>(37, 50, 130, rng);  // C, d, n off the tile sizes
  if (sizeof(T) == 4)  // several tiles per split (the walk is the same for both dtypes)
    test_margin_softmax<T>(1000, 9, 1300, 30, rng, false);
}

// One Gram tile of rows a (na x d) and b (nb x d) on Gram G, written out as
// out[m * kTileCols + j] = a_m . b_j through tile_row / tile_col.
template <faceops::cuda::detail::Gram G>
__global__ void gram_tile_kernel(const float* a, int na, const float* b, int nb, int64_t d,
                                 float* out) {
  using namespace faceops::cuda::detail;
  __shared__ DistanceTile<float> tile;
  float acc[kMicroRows][kMicroCols];
  tile_dot_products<G>(a, na, 0, b, nb, 0, d, tile.rows, tile.cols, acc);
  for (int r = 0; r < kMicroRows; ++r)
    for (int c = 0; c < kMicroCols; ++c)
      out[tile_row<G>(r) * kTileCols + tile_col<G>(c)] = acc[r][c];
}

// The tensor-core tile against float64 dot products: every element written
// (out starts NaN), each within 2e-6 of sum_k |a_k b_k| (3xTF32; one TF32
// product per step would be off by about 5e-4 of it, FMA float by d 6e-8),
// rows and columns past na and nb zero.
void test_gram_tile(int na, int nb, int64_t d, std::mt19937& rng) {
  using faceops::cuda::detail::Gram, faceops::cuda::detail::kTileRows,
      faceops::cuda::detail::kTileCols;
  const auto a = randn<float>(na * d, rng), b = randn<float>(nb * d, rng);
  std::vector<float> out(kTileRows * kTileCols, std::numeric_limits<float>::quiet_NaN());
  const long mma_before = g_mma_calls;
  emulated_launch(gram_tile_kernel<Gram::kTf32x3>, 1, faceops::cuda::detail::kThreads, a.data(),
                  na, b.data(), nb, d, out.data());
  double worst = 0;
  for (int m = 0; m < kTileRows; ++m)
    for (int j = 0; j < kTileCols; ++j) {
      double dot = 0, magnitude = 0;
      for (int64_t k = 0; m < na && j < nb && k < d; ++k) {
        dot += double(a[m * d + k]) * double(b[j * d + k]);
        magnitude += std::abs(double(a[m * d + k]) * double(b[j * d + k]));
      }
      const double got = out[m * kTileCols + j];
      const double err = std::isnan(got) ? 1.0 : std::abs(got - dot) / std::max(magnitude, 1e-30);
      worst = std::max(worst, err);
    }
  char buf[200];
  std::snprintf(buf, sizeof buf, "tensor-core Gram tile %d x %d, d=%ld (%ld mma)", na, nb, (long)d,
                g_mma_calls - mma_before);
  expect<float>(buf, g_mma_calls > mma_before ? worst : 1.0, 2e-6);
}

// The float kernels that take the tensor-core Gram (FACEOPS_CUDA_GRAM=tf32x3:
// batch-hard, the pair loss, the margin softmax) run the checks of the FMA
// Gram, and do run mma.  The triplet checks run batch-hard only and the
// block-order checks leave out the centre loss: the rest runs on FMA, checked
// above.
void run_tensor_cores(std::mt19937& rng) {
  test_gram_tile(32, 64, 16, rng);
  test_gram_tile(32, 64, 512, rng);
  test_gram_tile(7, 45, 37, rng);  // rows, columns and features off the tile
  setenv("FACEOPS_CUDA_GRAM", "tf32x3", 1);
  g_modes = {int(faceops::TripletMining::kHard)};
  const long mma_before = g_mma_calls;
  test_pair<float>(2, 5, 1, rng);
  test_pair<float>(97, 37, 5, rng);
  test_pair<float>(300, 6, 12, rng);
  test_triplet<float>(97, 33, 12, 0, rng);
  test_triplet<float>(66, 8, 6, 1, rng);  // ties
  test_triplet<float>(66, 8, 3, 2, rng);  // near duplicates
  test_triplet_duplicates<float>(rng);
  test_pair_ref<float>(97, 130, 37, 5, true, rng);
  test_pair_ref<float>(300, 260, 6, 12, false, rng);
  test_triplet_ref<float>(66, 80, 8, 6, true, true, rng);
  test_triplet_ref<float>(33, 300, 16, 64, true, false, rng);
  test_margin_softmax<float>(1, 33, 70, 30, rng);
  test_margin_softmax<float>(37, 50, 130, 30, rng);  // C, d, n off the tile sizes
  test_margin_softmax<float>(70, 128, 64, 64, rng);
  test_margin_softmax<float>(1000, 9, 1300, 30, rng, false);  // several tiles per split
  test_margin_softmax_shard<float>(37, 50, 130, rng);
  test_overflowing_norms<float>(37, 50, 20, rng);
  run_block_order<float>(rng, false);
  g_modes = {0, 1, 2};
  char buf[200];
  std::snprintf(buf, sizeof buf, "FACEOPS_CUDA_GRAM=tf32x3 ran %ld mma", g_mma_calls - mma_before);
  expect<float>(buf, g_mma_calls > mma_before ? 0 : 1);
  unsetenv("FACEOPS_CUDA_GRAM");
}

int main() {
  if (faceops::cuda_available() || !faceops::built_with_cuda()) {
    std::printf("FAIL cuda_available() must be false and built_with_cuda() true here\n");
    return 1;
  }
  test_fixed_point<double>(2);
  test_fixed_point<float>(1);
  test_fixed_point<float>(2);
  std::mt19937 rng(1234);
  run_all<double>(rng);
  run_all<float>(rng);
  std::mt19937 margin_rng(4321);
  run_margin_softmax<double>(margin_rng);
  run_margin_softmax<float>(margin_rng);
  std::mt19937 overflow_rng(8642);
  test_overflowing_norms<double>(37, 50, 20, overflow_rng);
  test_overflowing_norms<float>(37, 50, 20, overflow_rng);
  std::mt19937 reference_rng(2468);
  run_reference_sets<double>(reference_rng);
  run_reference_sets<float>(reference_rng);
  std::mt19937 order_rng(1357);
  run_block_order<double>(order_rng);
  run_block_order<float>(order_rng);
  const long fma_mma = g_mma_calls;  // nothing above ran on the tensor cores
  std::mt19937 tensor_core_rng(9753);
  run_tensor_cores(tensor_core_rng);
  if (fma_mma != 0) {
    std::printf("FAIL %ld mma ran with FACEOPS_CUDA_GRAM unset\n", fma_mma);
    ++failures;
  }
  std::printf("%d failures, %ld live allocations, %ld launches\n", failures, g_live_allocations,
              g_launches);
  return failures != 0 || g_live_allocations != 0;
}
