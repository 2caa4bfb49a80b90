#include "core/threadpool.h"

#include "core/sysinfo.h"

#include <cblas.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

namespace fastvar {
namespace {

thread_local bool t_in_worker = false;

class Pool {
 public:
  // OpenBLAS stays single-threaded: its own threads would spin (sched_yield)
  // against these workers on every core. cpu::gemm splits large products here.
  explicit Pool(int n) {
    openblas_set_num_threads(1);
    resize(n);
  }
  ~Pool() { stop(); }

  int size() const { return static_cast<int>(workers_.size()) + 1; }

  void resize(int n) {
    stop();
    stopping_ = false;
    // New workers start from the current generation: a job that already ran
    // must not look new to them.
    for (int i = 1; i < n; ++i) workers_.emplace_back([this, i, g = generation_] { loop(i, g); });
  }

  // Runs job(i) for i in [0, size()) with the calling thread taking i = 0.
  void run(const std::function<void(int)>& job) {
    if (workers_.empty()) {
      job(0);
      return;
    }
    {
      std::lock_guard<std::mutex> lk(mu_);
      job_ = &job;
      pending_ = static_cast<int>(workers_.size());
      ++generation_;
    }
    cv_.notify_all();
    t_in_worker = true;
    job(0);
    t_in_worker = false;
    std::unique_lock<std::mutex> lk(mu_);
    done_cv_.wait(lk, [this] { return pending_ == 0; });
    job_ = nullptr;
  }

 private:
  void stop() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
    workers_.clear();
  }

  void loop(int index, uint64_t seen) {
    t_in_worker = true;
    for (;;) {
      const std::function<void(int)>* job;
      {
        std::unique_lock<std::mutex> lk(mu_);
        cv_.wait(lk, [&] { return stopping_ || generation_ != seen; });
        if (stopping_) return;
        seen = generation_;
        job = job_;
      }
      (*job)(index);
      {
        std::lock_guard<std::mutex> lk(mu_);
        if (--pending_ == 0) done_cv_.notify_one();
      }
    }
  }

  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable cv_, done_cv_;
  const std::function<void(int)>* job_ = nullptr;
  int pending_ = 0;
  uint64_t generation_ = 0;
  bool stopping_ = false;
};

int default_threads() { return available_cpus(); }

std::mutex g_pool_mu;
Pool& pool() {
  static Pool p(default_threads());
  return p;
}

}  // namespace

void set_num_threads(int n) {
  // More threads than CPUs only make the workers wait for each other (the CLI
  // warns when it caps a request).
  if (n <= 0 || n > available_cpus()) n = default_threads();
  std::lock_guard<std::mutex> lk(g_pool_mu);
  if (pool().size() != n) pool().resize(n);
}

int num_threads() { return pool().size(); }

void parallel_for(int64_t n, const std::function<void(int64_t, int64_t)>& fn, int64_t grain) {
  if (n <= 0) return;
  grain = std::max<int64_t>(grain, 1);
  int threads = num_threads();
  int64_t chunks = std::min<int64_t>(threads, (n + grain - 1) / grain);
  if (chunks <= 1 || t_in_worker) {
    fn(0, n);
    return;
  }
  std::lock_guard<std::mutex> lk(g_pool_mu);
  // Static partition: chunk i covers [i*n/chunks, (i+1)*n/chunks).
  pool().run([&](int i) {
    if (i >= chunks) return;
    int64_t b = n * i / chunks, e = n * (i + 1) / chunks;
    if (b < e) fn(b, e);
  });
}

}  // namespace fastvar
