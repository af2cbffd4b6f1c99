// Ring attention: K/V chunks travel around the ranks while each rank attends its queries to the chunk at
// hand; partial results merge by log-sum-exp. The per-block compute is the library's public fused SDPA and
// its backward (attn/attention.h); this file plans the blocks and moves the data.
#include <algorithm>
#include <array>
#include <bit>
#include <chrono>
#include <cmath>
#include <exception>
#include <limits>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include <omp.h>

#include "attn/dist/ring_attention.h"
#include "attn/error.h"
#include "mpi_util.h"
#include "sequence.h"

namespace attn::dist {
namespace {

using detail::Piece;
using detail::rows;

enum Tag : int { kTagK = 11, kTagV, kTagPad, kTagDk, kTagDv };

// What every rank tells the others before the ring starts: its verdict on its own inputs, its shapes and the options
// that change the numbers (the scale as its bit pattern, −1 for the default 1/√D; the implementation).
enum Field : size_t { kOk, kB, kH, kHkv, kD, kDv, kLq, kLk, kPad, kLayout, kCausal, kScale, kImpl, kFields };
using Header = std::array<int64_t, kFields>;
enum Verdict : int64_t { kFine = 0, kShape, kDType, kArgument };

struct LocalCheck {
  Verdict verdict = kFine;
  std::string message;
  void fail(Verdict v, const std::string& m) {
    if (verdict == kFine) verdict = v, message = m;
  }
};

std::string shape_of(const Tensor& t) { return t.defined() ? shape_str(t.shape()) : "(none)"; }

// The inputs of this rank alone: ranks, dtypes, the sizes that must agree, unsupported options, and what the per-block
// SDPA would refuse (checked here, before any message: a rank that threw inside the ring would leave the others
// waiting). `backward`: the reference backward is refused (it recomputes each block's softmax over that block alone).
LocalCheck check_local(const char* fn, const Tensor& q, const Tensor& k, const Tensor& v, const RingOptions& o,
                       bool backward = false) {
  LocalCheck c;
  const std::string f = fn;
  for (const auto& [name, t] : {std::pair{"q_local", &q}, {"k_local", &k}, {"v_local", &v}}) {
    if (!t->defined() || t->rank() != 4)
      c.fail(kShape, f + ": " + name + " has shape " + shape_of(*t) + "; q/k/v must be [B, H|Hkv, L, D|Dv]");
    else if (t->dtype() != DType::kFloat32)
      c.fail(kDType, f + ": " + name + " is " + dtype_name(t->dtype()) + ", expected float32");
  }
  if (c.verdict != kFine) return c;
  const std::string shapes = " (q_local " + shape_of(q) + ", k_local " + shape_of(k) + ", v_local " + shape_of(v) + ")";
  if (k.dim(0) != q.dim(0) || v.dim(0) != q.dim(0) || v.dim(1) != k.dim(1) || v.dim(2) != k.dim(2) ||
      k.dim(3) != q.dim(3))
    c.fail(kShape,
           f + ": q/k/v sizes disagree" + shapes + "; expected [B, H, Lq, D], [B, Hkv, Lk, D], [B, Hkv, Lk, Dv]");
  else if (k.dim(1) == 0 || q.dim(1) % k.dim(1) != 0)
    c.fail(kShape, f + ": H = " + std::to_string(q.dim(1)) + " is not a multiple of Hkv = " + std::to_string(k.dim(1)) +
                       shapes);
  const AttentionOptions& a = o.attention;
  if (a.key_padding_mask.defined()) {
    if (a.key_padding_mask.dtype() != DType::kBool)
      c.fail(kDType,
             f + ": key_padding_mask is " + std::string(dtype_name(a.key_padding_mask.dtype())) + ", expected bool");
    else if (a.key_padding_mask.shape() != Shape{k.dim(0), k.dim(2)})
      c.fail(kShape, f + ": key_padding_mask has shape " + shape_of(a.key_padding_mask) +
                         ", expected the local [B, Lk_r] = " + shape_str({k.dim(0), k.dim(2)}));
  }
  if (a.mask.defined()) c.fail(kArgument, f + ": a mask is not supported (key_padding_mask and causal are)");
  if (a.window != 0) c.fail(kArgument, f + ": window is not supported");
  if (a.alibi_slopes.defined()) c.fail(kArgument, f + ": alibi_slopes are not supported");
  if (a.dropout_p != 0.0f) c.fail(kArgument, f + ": dropout_p is not supported");
  if (a.return_weights) c.fail(kArgument, f + ": return_weights is not supported (the weights are never whole)");
  if (a.num_threads < 0) c.fail(kArgument, f + ": num_threads must be >= 0, got " + std::to_string(a.num_threads));
  if (q.dim(3) == 0 && !a.scale) c.fail(kArgument, f + ": D = 0 needs an explicit scale" + shapes);
  if (static_cast<int>(a.causal) > static_cast<int>(CausalAlignment::kBottomRight))
    c.fail(kArgument, f + ": causal is not a CausalAlignment (" + std::to_string(static_cast<int>(a.causal)) + ")");
  if (static_cast<int>(a.impl) > static_cast<int>(AttentionImpl::kReference))
    c.fail(kArgument, f + ": impl is not an AttentionImpl (" + std::to_string(static_cast<int>(a.impl)) + ")");
  if (static_cast<int>(o.layout) > static_cast<int>(SequenceLayout::kZigzag))
    c.fail(kArgument, f + ": layout is not a SequenceLayout (" + std::to_string(static_cast<int>(o.layout)) + ")");
  if (backward && a.impl == AttentionImpl::kReference)
    c.fail(kArgument, f + ": impl reference is not supported (the reference backward recomputes the softmax over one "
                          "block of keys, not from the whole row's lse); use auto, fused or unfused");
  return c;
}

// Everything the ranks agreed on, after the exchange of headers.
struct Ring {
  int rank = 0, size = 1;
  int64_t B = 0, H = 0, Hkv = 0, D = 0, Dv = 0;
  std::vector<int64_t> lq, lk;  // rows per rank
  bool pad = false, causal = false;
  int64_t offset = 0;  // key j (global) is visible to query i (global) when j <= i + offset
  SequenceLayout layout = SequenceLayout::kContiguous;
  int left() const { return (rank + size - 1) % size; }
  int right() const { return (rank + 1) % size; }
  int64_t max_lk() const { return *std::max_element(lk.begin(), lk.end()); }
};

Ring agree(const char* fn, const detail::CommDup& comm, const LocalCheck& mine, const Tensor& q, const Tensor& k,
           const Tensor& v, const RingOptions& o) {
  Header h{};
  h[kOk] = mine.verdict;
  if (h[kOk] == kFine) {
    h[kB] = q.dim(0), h[kH] = q.dim(1), h[kHkv] = k.dim(1), h[kD] = q.dim(3), h[kDv] = v.dim(3);
    h[kLq] = q.dim(2), h[kLk] = k.dim(2);
  }
  h[kPad] = o.attention.key_padding_mask.defined();
  h[kLayout] = static_cast<int64_t>(o.layout);
  h[kCausal] = static_cast<int64_t>(o.attention.causal);
  h[kScale] = o.attention.scale ? static_cast<int64_t>(std::bit_cast<uint32_t>(*o.attention.scale)) : -1;
  h[kImpl] = static_cast<int64_t>(o.attention.impl);
  std::vector<Header> all(static_cast<size_t>(comm.size()));
  detail::check_mpi(MPI_Allgather(h.data(), kFields, MPI_INT64_T, all.data(), kFields, MPI_INT64_T, comm.get()),
                    "ring_attention: MPI_Allgather of the shapes");
  const std::string me = std::string(fn) + " (rank " + std::to_string(comm.rank()) + "): ";
  for (size_t s = 0; s < all.size(); ++s) {
    if (all[s][kOk] == kFine) continue;
    const std::string why = static_cast<int>(s) == comm.rank()
                                ? mine.message
                                : "rank " + std::to_string(s) + " rejected its inputs (its message says why)";
    if (all[s][kOk] == kDType) throw DTypeError(me + why);
    if (all[s][kOk] == kArgument) throw ArgumentError(me + why);
    throw ShapeError(me + why);
  }
  auto describe = [](const Header& x) {
    return "q [" + std::to_string(x[kB]) + ", " + std::to_string(x[kH]) + ", " + std::to_string(x[kLq]) + ", " +
           std::to_string(x[kD]) + "], k/v [" + std::to_string(x[kB]) + ", " + std::to_string(x[kHkv]) + ", " +
           std::to_string(x[kLk]) + ", " + std::to_string(x[kD]) + "|" + std::to_string(x[kDv]) +
           "], key_padding_mask " + (x[kPad] ? "given" : "none") + ", layout " +
           layout_name(static_cast<SequenceLayout>(x[kLayout])) + ", causal " +
           causal_name(static_cast<CausalAlignment>(x[kCausal])) + ", scale " +
           (x[kScale] < 0 ? std::string("default")
                          : std::to_string(std::bit_cast<float>(static_cast<uint32_t>(x[kScale])))) +
           ", impl " + impl_name(static_cast<AttentionImpl>(x[kImpl]));
  };
  for (size_t s = 1; s < all.size(); ++s)
    for (Field f : {kB, kH, kHkv, kD, kDv, kPad, kLayout, kCausal, kScale, kImpl})
      if (all[s][f] != all[0][f])
        throw ShapeError(me + "the ranks disagree: rank " + std::to_string(s) + " has " + describe(all[s]) +
                         ", rank 0 has " + describe(all[0]) + " (only the lengths Lq, Lk may differ)");
  Ring r;
  r.rank = comm.rank(), r.size = comm.size();
  r.B = h[kB], r.H = h[kH], r.Hkv = h[kHkv], r.D = h[kD], r.Dv = h[kDv];
  for (const Header& x : all) r.lq.push_back(x[kLq]), r.lk.push_back(x[kLk]);
  r.pad = h[kPad] != 0;
  r.layout = o.layout;
  r.causal = o.attention.causal != CausalAlignment::kNone;
  // every block that will travel fits one MPI message (counted in floats), checked alike on every rank before any is
  // sent; the sizes come from the agreed lengths, so all ranks reach the same verdict
  const int64_t block_floats = r.B * r.Hkv * r.max_lk() * std::max(r.D, r.Dv);
  if (block_floats > std::numeric_limits<int>::max())
    throw ArgumentError(
        me + "a K/V block of " + std::to_string(block_floats) + " floats (B " + std::to_string(r.B) + " x Hkv " +
        std::to_string(r.Hkv) + " x the longest chunk " + std::to_string(r.max_lk()) +
        " x max(D, Dv)) is more than one MPI message holds (2^31 - 1): use more ranks or split the heads "
        "or the batch across calls");
  if (o.attention.causal == CausalAlignment::kBottomRight) {
    int64_t total_q = 0, total_k = 0;
    for (size_t s = 0; s < all.size(); ++s) total_q += r.lq[s], total_k += r.lk[s];
    r.offset = total_k - total_q;
  }
  return r;
}

// One SDPA call of a block: local query rows [q0, q0 + qn) against the block's key rows [k0, k0 + kn).
struct Task {
  int64_t q0, qn, k0, kn;
  CausalAlignment causal;
};

// The calls that cover queries `qp` (this rank's pieces) against keys `kp` (the block's pieces). Causal:
// key j <= query i + d within a pair of pieces, d = q.global + offset − k.global; rows that see no key are
// skipped, rows that see part of the keys form one bottom-right call, rows that see all of them a plain one.
std::vector<Task> plan_block(const std::vector<Piece>& qp, const std::vector<Piece>& kp, const Ring& ring) {
  std::vector<Task> tasks;
  for (const Piece& q : qp)
    for (const Piece& k : kp) {
      if (!ring.causal) {
        tasks.push_back({q.local, q.length, k.local, k.length, CausalAlignment::kNone});
        continue;
      }
      const int64_t d = q.global + ring.offset - k.global, ql = q.length, kl = k.length;
      if (d >= kl - 1) {
        tasks.push_back({q.local, ql, k.local, kl, CausalAlignment::kNone});
      } else if (ql - 1 + d >= 0) {
        const int64_t i0 = std::max<int64_t>(0, -d), i1 = std::clamp<int64_t>(kl - d, i0, ql);
        if (i1 > i0) tasks.push_back({q.local + i0, i1 - i0, k.local, i1 + d, CausalAlignment::kBottomRight});
        if (ql > i1) tasks.push_back({q.local + i1, ql - i1, k.local, kl, CausalAlignment::kNone});
      }
    }
  // plain calls over the same queries and adjacent keys (or the same keys and adjacent queries) become one
  for (bool merged = true; merged;) {
    merged = false;
    for (size_t a = 0; a < tasks.size() && !merged; ++a)
      for (size_t b = 0; b < tasks.size() && !merged; ++b) {
        Task &x = tasks[a], &y = tasks[b];
        if (a == b || x.causal != CausalAlignment::kNone || y.causal != CausalAlignment::kNone) continue;
        if (x.q0 == y.q0 && x.qn == y.qn && x.k0 + x.kn == y.k0) {
          x.kn += y.kn, merged = true;
        } else if (x.k0 == y.k0 && x.kn == y.kn && x.q0 + x.qn == y.q0) {
          x.qn += y.qn, merged = true;
        }
        if (merged) tasks.erase(tasks.begin() + static_cast<std::ptrdiff_t>(b));
      }
  }
  std::erase_if(tasks, [](const Task& t) { return t.qn == 0 || t.kn == 0; });
  return tasks;
}

AttentionOptions task_options(const RingOptions& o, const Task& t, const Tensor& pad) {
  AttentionOptions a;
  a.scale = o.attention.scale;
  a.impl = o.attention.impl;
  a.num_threads = o.attention.num_threads;
  a.causal = t.causal;
  if (pad.defined()) a.key_padding_mask = rows(pad, 1, t.k0, t.kn);
  return a;
}

// acc rows [q0, q0 + n) and their lse  <-  the log-sum-exp merge with a block's (out [B, H, n, Dv], lse [B, H, n]), on
// `threads` threads (0: the OpenMP default), as the kernels.
void merge(Tensor& acc, Tensor& acc_lse, int64_t q0, const Tensor& out, const Tensor& lse, int threads) {
  const int64_t BH = out.dim(0) * out.dim(1), n = out.dim(2), Dv = out.dim(3), Lq = acc.dim(2);
  float *a = acc.f32(), *al = acc_lse.f32();
  const float *b = out.f32(), *bl = lse.f32();
  const int team = threads > 0 ? threads : omp_get_max_threads();
#pragma omp parallel for num_threads(team) schedule(static)
  for (int64_t row = 0; row < BH * n; ++row) {
    const int64_t bh = row / n, i = row % n;
    const float lb = bl[row];
    float& la = al[bh * Lq + q0 + i];
    float* ar = a + (bh * Lq + q0 + i) * Dv;
    const float* br = b + row * Dv;
    if (lb == -std::numeric_limits<float>::infinity()) continue;  // the block hid every key of this row
    if (la == -std::numeric_limits<float>::infinity()) {
      std::copy(br, br + Dv, ar), la = lb;
      continue;
    }
    const double m = std::max(la, lb), wa = std::exp(la - m), wb = std::exp(lb - m), s = wa + wb;
    const float fa = static_cast<float>(wa / s), fb = static_cast<float>(wb / s);
    for (int64_t j = 0; j < Dv; ++j) ar[j] = fa * ar[j] + fb * br[j];
    la = static_cast<float>(m + std::log(s));
  }
}

// A block of keys as it travels: K, V, padding (and their gradients in the backward) in flat buffers sized for the
// longest chunk, viewed with the shape of the chunk at hand.
struct BlockBuffers {
  Tensor k, v, pad;
  BlockBuffers(const Ring& r, bool with_pad)
      : k(Shape{r.B * r.Hkv * r.max_lk() * r.D}),
        v(Shape{r.B * r.Hkv * r.max_lk() * r.Dv}),
        pad(with_pad ? Tensor(Shape{r.B * r.max_lk()}, DType::kBool) : Tensor()) {}
};

Tensor view(const Tensor& flat, Shape shape) {
  return Tensor::borrow(std::move(shape), flat.dtype(), const_cast<void*>(flat.raw()), std::make_shared<Tensor>(flat));
}

struct Block {
  Tensor k, v, pad;  // [B, Hkv, Lk_s, D], [B, Hkv, Lk_s, Dv], [B, Lk_s] or undefined
};

Block block_view(const BlockBuffers& buf, const Ring& r, int src) {
  const int64_t L = r.lk[static_cast<size_t>(src)];
  return {view(buf.k, {r.B, r.Hkv, L, r.D}), view(buf.v, {r.B, r.Hkv, L, r.Dv}),
          buf.pad.defined() ? view(buf.pad, {r.B, L}) : Tensor()};
}

void post(std::vector<MPI_Request>& reqs, bool send, const Tensor& t, int peer, int tag, MPI_Comm comm,
          int64_t* bytes) {
  if (!t.defined()) return;
  MPI_Request req;
  // floats counted as floats (8 GB a message), padding flags as bytes; agree() checked both counts fit an int
  const bool floats = t.dtype() == DType::kFloat32;
  const MPI_Datatype type = floats ? MPI_FLOAT : MPI_BYTE;
  const int n = detail::mpi_count(t.numel(), "ring_attention: a K/V block");
  const int code = send ? MPI_Isend(t.raw(), n, type, peer, tag, comm, &req)
                        : MPI_Irecv(const_cast<void*>(t.raw()), n, type, peer, tag, comm, &req);
  detail::check_mpi(code, send ? "ring_attention: MPI_Isend" : "ring_attention: MPI_Irecv");
  if (send && bytes) *bytes += static_cast<int64_t>(t.nbytes());
  reqs.push_back(req);
}

// Sends `cur` to the right and receives the next block (from rank `next_src`) from the left into `into`.
void pass_block(std::vector<MPI_Request>& reqs, const Ring& r, const Block& cur, const Block& into, MPI_Comm comm,
                int64_t* bytes) {
  post(reqs, false, into.k, r.left(), kTagK, comm, nullptr);
  post(reqs, false, into.v, r.left(), kTagV, comm, nullptr);
  post(reqs, false, into.pad, r.left(), kTagPad, comm, nullptr);
  post(reqs, true, cur.k, r.right(), kTagK, comm, bytes);
  post(reqs, true, cur.v, r.right(), kTagV, comm, bytes);
  post(reqs, true, cur.pad, r.right(), kTagPad, comm, bytes);
}

// After a step's messages are complete: whether any rank's compute failed, learnt by every rank, and all throw
// together: the failing rank its own error, the others an Error naming it. (A rank that threw alone would have left
// the others waiting for its next block, with its own receives still posted into freed buffers.)
void agree_step(const detail::CommDup& c, const char* fn, const std::exception_ptr& error) {
  if (c.size() == 1) {
    if (error) std::rethrow_exception(error);
    return;
  }
  const int mine = error ? c.rank() : -1;
  int failed = -1;
  detail::check_mpi(MPI_Allreduce(&mine, &failed, 1, MPI_INT, MPI_MAX, c.get()), "ring: MPI_Allreduce of a step");
  if (error) std::rethrow_exception(error);
  if (failed >= 0)
    throw Error(std::string(fn) + " (rank " + std::to_string(c.rank()) + "): rank " + std::to_string(failed) +
                " failed in a step of the ring (its message says why)");
}

}  // namespace

RingResult ring_attention(const Tensor& q_local, const Tensor& k_local, const Tensor& v_local, MPI_Comm comm,
                          const RingOptions& options) {
  const auto t0 = std::chrono::steady_clock::now();
  detail::CommDup c(comm);
  const LocalCheck mine = check_local("ring_attention", q_local, k_local, v_local, options);
  const Ring r = agree("ring_attention", c, mine, q_local, k_local, v_local, options);
  RingResult res;
  res.stats.wait_seconds = detail::seconds_since(t0);
  res.output = Tensor({r.B, r.H, q_local.dim(2), r.Dv});
  Tensor lse({r.B, r.H, q_local.dim(2)});
  std::fill(lse.f32(), lse.f32() + lse.numel(), -std::numeric_limits<float>::infinity());
  const std::vector<Piece> mine_q = detail::pieces_of(r.lq, r.rank, r.layout);
  std::array<BlockBuffers, 2> bufs{BlockBuffers(r, r.pad), BlockBuffers(r, r.pad)};
  Block cur{k_local, v_local, options.attention.key_padding_mask};
  detail::Exchange ex;
  for (int s = 0; s < r.size; ++s) {
    const int src = (r.rank - s + r.size) % r.size, next_src = (src - 1 + r.size) % r.size;
    Block next;
    if (s + 1 < r.size) {
      next = block_view(bufs[static_cast<size_t>(s % 2)], r, next_src);
      std::vector<MPI_Request> reqs;
      pass_block(reqs, r, cur, next, c.get(), &res.stats.bytes_sent);
      ex.start(std::move(reqs));
    }
    std::exception_ptr error;  // the step's messages complete, and every rank hears of it, before it is thrown
    try {
      for (const Task& t : plan_block(mine_q, detail::pieces_of(r.lk, src, r.layout), r)) {
        AttentionOptions a = task_options(options, t, cur.pad);
        a.return_lse = true;
        const AttentionResult part = scaled_dot_product_attention(
            rows(q_local, 2, t.q0, t.qn), rows(cur.k, 2, t.k0, t.kn), rows(cur.v, 2, t.k0, t.kn), a);
        merge(res.output, lse, t.q0, part.output, part.lse, options.attention.num_threads);
      }
    } catch (...) {
      error = std::current_exception();
    }
    ++res.stats.steps;
    if (s + 1 < r.size) res.stats.wait_seconds += ex.finish();
    agree_step(c, "ring_attention", error);
    if (s + 1 < r.size) cur = next;
  }
  if (options.attention.return_lse) res.lse = lse;
  res.stats.seconds = detail::seconds_since(t0);
  return res;
}

RingGrads ring_attention_backward(const Tensor& q_local, const Tensor& k_local, const Tensor& v_local,
                                  const Tensor& out_local, const Tensor& lse_local, const Tensor& d_out_local,
                                  MPI_Comm comm, const RingOptions& options) {
  const auto t0 = std::chrono::steady_clock::now();
  detail::CommDup c(comm);
  const char* fn = "ring_attention_backward";
  LocalCheck mine = check_local(fn, q_local, k_local, v_local, options, /*backward=*/true);
  if (mine.verdict == kFine) {
    const Shape want_out{q_local.dim(0), q_local.dim(1), q_local.dim(2), v_local.dim(3)};
    for (const auto& [name, t, want] : {std::tuple{"out_local", &out_local, want_out},
                                        {"d_out_local", &d_out_local, want_out},
                                        {"lse_local", &lse_local, Shape{want_out[0], want_out[1], want_out[2]}}})
      if (!t->defined() || t->shape() != want)
        mine.fail(kShape, std::string(fn) + ": " + name + " has shape " + shape_of(*t) + ", expected " +
                              shape_str(want) + " (q_local " + shape_of(q_local) + ")");
      else if (t->dtype() != DType::kFloat32)
        mine.fail(kDType, std::string(fn) + ": " + name + " is " + dtype_name(t->dtype()) + ", expected float32");
  }
  const Ring r = agree(fn, c, mine, q_local, k_local, v_local, options);
  RingGrads g;
  g.stats.wait_seconds = detail::seconds_since(t0);
  g.dq = Tensor(q_local.shape());
  const std::vector<Piece> mine_q = detail::pieces_of(r.lq, r.rank, r.layout);
  std::array<BlockBuffers, 2> bufs{BlockBuffers(r, r.pad), BlockBuffers(r, r.pad)};
  // dK/dV of the block at hand (computed here), of the one before (on its way right), arriving (from the left)
  std::array<BlockBuffers, 3> dbufs{BlockBuffers(r, false), BlockBuffers(r, false), BlockBuffers(r, false)};
  size_t dcur = 0, dprev = 1, din = 2;
  Block cur{k_local, v_local, options.attention.key_padding_mask}, prev_grad;
  detail::Exchange ex;
  for (int s = 0; s < r.size; ++s) {
    const int src = (r.rank - s + r.size) % r.size, next_src = (src - 1 + r.size) % r.size;
    // Every view of the step, and room for its requests, made before any message is posted: nothing between the first
    // post and the guarded compute below may throw past finish() (the requests would write into freed buffers).
    Block grad = block_view(dbufs[dcur], r, src);
    std::fill(grad.k.f32(), grad.k.f32() + grad.k.numel(), 0.0f);
    std::fill(grad.v.f32(), grad.v.f32() + grad.v.numel(), 0.0f);
    std::vector<MPI_Request> reqs;
    reqs.reserve(10);  // (at most 6 for the block, 4 for the gradients)
    Block next, incoming;
    if (s + 1 < r.size) next = block_view(bufs[static_cast<size_t>(s % 2)], r, next_src);
    if (s > 0) incoming = block_view(dbufs[din], r, src);
    if (s + 1 < r.size) pass_block(reqs, r, cur, next, c.get(), &g.stats.bytes_sent);
    if (s > 0) {  // the previous block's dK/dV goes right; this block's partial sum arrives from the left
      post(reqs, false, incoming.k, r.left(), kTagDk, c.get(), nullptr);
      post(reqs, false, incoming.v, r.left(), kTagDv, c.get(), nullptr);
      post(reqs, true, prev_grad.k, r.right(), kTagDk, c.get(), &g.stats.bytes_sent);
      post(reqs, true, prev_grad.v, r.right(), kTagDv, c.get(), &g.stats.bytes_sent);
    }
    ex.start(std::move(reqs));
    std::exception_ptr error;  // as in the forward: thrown on every rank once the step's messages are complete
    try {
      for (const Task& t : plan_block(mine_q, detail::pieces_of(r.lk, src, r.layout), r)) {
        const AttentionGrads part = scaled_dot_product_attention_backward(
            rows(q_local, 2, t.q0, t.qn), rows(cur.k, 2, t.k0, t.kn), rows(cur.v, 2, t.k0, t.kn),
            rows(out_local, 2, t.q0, t.qn), rows(lse_local, 2, t.q0, t.qn), rows(d_out_local, 2, t.q0, t.qn),
            task_options(options, t, cur.pad));
        detail::put_rows(g.dq, 2, t.q0, part.dq, false);
        detail::put_rows(grad.k, 2, t.k0, part.dk, false);
        detail::put_rows(grad.v, 2, t.k0, part.dv, false);
      }
    } catch (...) {
      error = std::current_exception();
    }
    ++g.stats.steps;
    g.stats.wait_seconds += ex.finish();
    agree_step(c, fn, error);
    if (s > 0) detail::put_rows(grad.k, 2, 0, incoming.k, false), detail::put_rows(grad.v, 2, 0, incoming.v, false);
    if (s + 1 < r.size) cur = next;
    prev_grad = grad;
    std::swap(dcur, dprev);
  }
  if (r.size == 1) {
    g.dk = prev_grad.k.clone(), g.dv = prev_grad.v.clone();
  } else {  // the last hop: each block's complete dK/dV goes home
    g.dk = Tensor(k_local.shape()), g.dv = Tensor(v_local.shape());
    std::vector<MPI_Request> reqs;
    post(reqs, false, g.dk, r.left(), kTagDk, c.get(), nullptr);
    post(reqs, false, g.dv, r.left(), kTagDv, c.get(), nullptr);
    post(reqs, true, prev_grad.k, r.right(), kTagDk, c.get(), &g.stats.bytes_sent);
    post(reqs, true, prev_grad.v, r.right(), kTagDv, c.get(), &g.stats.bytes_sent);
    ex.start(std::move(reqs));
    g.stats.wait_seconds += ex.finish();
  }
  g.stats.seconds = detail::seconds_since(t0);
  return g;
}

}  // namespace attn::dist
