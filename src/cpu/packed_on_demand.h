// Internal: operand tiles shared by a call's tasks (the fused forwards' packed K, and V in 16-bit), packed without a
// barrier between the packing and the tasks. Each thread first packs its static share of the tiles and goes on to its
// tasks without waiting for the others (`omp for nowait`); a task that needs a tile nobody has packed yet packs it
// itself, and waits only for a tile another thread is packing at that moment. A barrier there made every thread wait
// for the slowest, under OMP_WAIT_POLICY=passive a sleep and a wake-up each; tiles packed only when a task first needs
// them made the threads, which take a head's tasks side by side, wait for each other's packing at every head.
#pragma once

#include <atomic>
#include <cstdint>
#include <thread>

namespace attn::detail {

// One state per tile: 0 not packed, 1 being packed by a task, 2 packed. The call zeroes the states before its tasks
// start, so a tile is packed once per call; a tile's packed data is written before its state turns 2 (release) and
// read after a task saw 2 (acquire).
class PackedOnDemand {
 public:
  // Tile t packed here if no task has claimed it yet (pack(t)); true if this call packed it. Never waits.
  template <class Pack>
  static bool pack_if_unclaimed(uint32_t* states, int64_t t, Pack&& pack) {
    std::atomic_ref<uint32_t> state(states[t]);
    uint32_t expected = kNotPacked;
    if (state.load(std::memory_order_acquire) != kNotPacked ||
        !state.compare_exchange_strong(expected, kPacking, std::memory_order_acquire, std::memory_order_relaxed))
      return false;
    pack(t);
    state.store(kPacked, std::memory_order_release);
    return true;
  }

  // Tiles [first, last) of `states` packed: those no task has claimed yet packed here, then a wait for those that other
  // tasks are packing. A task never waits while it holds a claim: no two wait on each other.
  template <class Pack>
  static void ensure(uint32_t* states, int64_t first, int64_t last, Pack&& pack) {
    for (int64_t t = first; t < last; ++t) pack_if_unclaimed(states, t, pack);
    for (int64_t t = first; t < last; ++t) {
      std::atomic_ref<uint32_t> state(states[t]);
      for (int spins = 0; state.load(std::memory_order_acquire) != kPacked; ++spins) {
        if (spins < 4096) {
#if defined(__x86_64__) || defined(__i386__)
          __builtin_ia32_pause();
#endif
        } else {
          std::this_thread::yield();  // the packing thread may have been descheduled (a shared machine)
        }
      }
    }
  }

 private:
  static constexpr uint32_t kNotPacked = 0, kPacking = 1, kPacked = 2;
};

}  // namespace attn::detail
