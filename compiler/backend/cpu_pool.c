/* TensorForge's CPU thread pool, linked into every CPU kernel library (compiler/backend/build.py).
 *
 * TVM's code generator calls every parallel loop through the function pointer `__TVMBackendParallelLaunch` that
 * each kernel library exports; TVM's loader points it at TVM's own pool, and the runtime (runtime/cpu_pool.py)
 * re-points it at `tf_pool_launch` below after loading. Why not TVM's pool: it splits each loop statically over
 * workers pinned one per core and the caller waits for all of them, so one worker that the OS does not schedule (a
 * core busy with another process) delays every kernel by a time slice: a small CNN took 40-55 ms instead of 0.04.
 *
 * Here:
 *  - a parallel loop is cut into more chunks than threads (CHUNKS_PER_THREAD per thread); each thread (the caller
 *    is thread 0, worker i is thread i + 1) owns a contiguous range of them and takes its own first, one at a
 *    time, then takes what is left of the others' ranges: a worker that is not scheduled delays only a chunk it
 *    has taken, never the loop, and on an idle machine every thread works on the same part of the data in every
 *    run (a memory-bound kernel keeps its half in its core's cache: handing chunks out from one counter instead
 *    made an elementwise add over 3 MB 4x slower than TVM's static split);
 *  - workers are not pinned; an idle worker spins briefly (SPIN_NS, covering the gaps between the kernels of a
 *    run), then sleeps on a futex, so the pool never keeps a core busy for long after a run;
 *  - a caller that wakes sleeping workers yields its CPU once, and a worker that finds itself on its caller's CPU
 *    moves off it (`leave_cpu`): Linux in a VM sees an idle vCPU as busy (preempted by the host) and wakes the
 *    worker on the waker's CPU, where it waited behind the caller, which never yields while it finds chunks, for
 *    the whole run (2 cores of a Zen 4 KVM guest, the LSTM classifier run after a pause: the workers took 0 of
 *    its 520 chunks, 1.0 ms as on one core, against 0.55 ms run back to back);
 *  - one loop at a time uses the workers: a caller that finds them busy (another thread running another model or
 *    run) runs its loop alone, as does a worker or a caller that asked for serial execution (small kernels,
 *    tf_pool_set_serial) and a pool of one thread; and while as many runs are in flight as the pool has threads
 *    (tf_pool_runs), every loop runs on its caller: the callers already fill the cores, and a worker would only
 *    take a core from one of them (2 callers of BERT-base on 2 cores: 0.88x the throughput of one caller);
 *  - an error raised by a chunk on a worker (a kernel's assertion) is moved to the calling thread.
 *
 * A loop's lambda computes its own slice from task_id and penv->num_task (TVM's codegen), so any chunk count works;
 * no kernel we generate uses TVMBackendParallelBarrier (which needs all tasks running at once).
 *
 * Correctness of the hand-out: each range's counter holds the generation of the current loop (high 32 bits) and
 * the next chunk of the range (low 32 bits); a chunk is taken by a compare-and-swap on the whole word, so a thread
 * that read the parameters of loop g can take a chunk only while loop g is current. The parameters live in a slot
 * per generation, read under a sequence lock; loop g+1 starts only after every chunk of loop g has finished.
 */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#ifdef __linux__
#include <linux/futex.h>
#include <sys/syscall.h>
#endif

typedef struct {
  void* sync_handle;
  int32_t num_task;
} TVMParallelGroupEnv;
typedef int (*FTVMParallelLambda)(int task_id, TVMParallelGroupEnv* penv, void* cdata);
typedef void* TVMFFIObjectHandle;
extern void TVMFFIErrorMoveFromRaised(TVMFFIObjectHandle* result);
extern void TVMFFIErrorSetRaised(TVMFFIObjectHandle error);
extern int TVMFFIObjectDecRef(TVMFFIObjectHandle obj);

#define TF_POOL_ABI 1
#define MAX_THREADS 256
#define CHUNKS_PER_THREAD 4
#define NSLOTS 4
#define SPIN_NS 1000000L /* 1 ms of spinning (pause, then sched_yield) before a worker sleeps: waking a sleeping
                          * worker took longer than a 0.45 ms kernel on a VM (its idle vCPU halted) */

typedef struct {
  _Atomic uint32_t seq; /* generation whose parameters the slot holds; 0 while being written */
  _Atomic(FTVMParallelLambda) fn;
  _Atomic(void*) cdata;
  _Atomic int32_t nchunks;
  _Atomic int32_t done;
  _Atomic(TVMFFIObjectHandle) error; /* first error raised on a worker */
  _Atomic int32_t failed;
} Slot;

typedef struct {
  _Atomic uint64_t word; /* generation << 32 | next chunk of this thread's range */
  char pad[56];          /* one cache line per counter */
} Counter;

static Slot slots[NSLOTS];
static Counter counters[MAX_THREADS];
static _Atomic uint32_t current; /* generation of the loop being handed out */
static _Atomic int32_t owners;   /* threads (ranges) of the current loop */
static _Atomic uint32_t wake_seq; /* futex word: bumped to wake sleeping workers */
static _Atomic int32_t sleepers;
static _Atomic int32_t busy; /* a loop is using the workers */
static _Atomic int32_t runs; /* model runs in flight (tf_pool_runs) */
static _Atomic int32_t stop;
static uint32_t generation; /* written only by the thread holding `busy` */
static int configured = 0;  /* threads asked for (0: not set) */
static int started = 0;     /* workers running */
static pthread_t workers[MAX_THREADS];
static pthread_mutex_t setup_lock = PTHREAD_MUTEX_INITIALIZER;
static _Thread_local int in_worker = 0;
static _Thread_local int serial = 0;
static _Atomic int64_t stat_loops, stat_inline, stat_chunks_by_caller, stat_chunks_by_workers;
static _Atomic int32_t caller_cpu = -1; /* the CPU the current loop's caller ran on when it started the loop */

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ __volatile__("yield");
#endif
}

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000L + ts.tv_nsec;
}

static void futex_wait(_Atomic uint32_t* addr, uint32_t expected) {
#ifdef __linux__
  syscall(SYS_futex, (uint32_t*)addr, FUTEX_WAIT_PRIVATE, expected, NULL, NULL, 0);
#else
  struct timespec ts = {0, 500000};
  if (atomic_load(addr) == expected) nanosleep(&ts, NULL);
#endif
}

static void futex_wake_all(_Atomic uint32_t* addr) {
#ifdef __linux__
  syscall(SYS_futex, (uint32_t*)addr, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
#else
  (void)addr;
#endif
}

/* Chunks [lo, hi) of n make up thread `owner`'s range among `k` threads. */
static inline int32_t range_start(int32_t owner, int32_t n, int32_t k) { return (int32_t)((int64_t)owner * n / k); }

/* Run one chunk; record a failure (moving a worker's error to the slot). */
static void run_one(Slot* s, FTVMParallelLambda fn, void* cdata, int32_t n, int32_t chunk, int by_worker) {
  TVMParallelGroupEnv env = {NULL, n};
  if (fn((int)chunk, &env, cdata) != 0) {
    if (by_worker) {
      TVMFFIObjectHandle err = NULL;
      TVMFFIErrorMoveFromRaised(&err);
      TVMFFIObjectHandle none = NULL;
      if (err && !atomic_compare_exchange_strong(&s->error, &none, err)) TVMFFIObjectDecRef(err);
    }
    atomic_store(&s->failed, 1);
  }
  atomic_fetch_add_explicit(&s->done, 1, memory_order_release);
}

/* Take and run chunks of loop `gen`: thread `self`'s own range first, then the rest of the others'. Returns the
 * number run. */
static int run_chunks(uint32_t gen, int32_t self, int by_worker) {
  Slot* s = &slots[gen % NSLOTS];
  uint32_t s1 = atomic_load_explicit(&s->seq, memory_order_acquire);
  if (s1 != gen) return 0;
  FTVMParallelLambda fn = atomic_load_explicit(&s->fn, memory_order_relaxed);
  void* cdata = atomic_load_explicit(&s->cdata, memory_order_relaxed);
  int32_t n = atomic_load_explicit(&s->nchunks, memory_order_relaxed);
  int32_t k = atomic_load_explicit(&owners, memory_order_relaxed);
  atomic_thread_fence(memory_order_acquire);
  if (atomic_load_explicit(&s->seq, memory_order_relaxed) != gen || k < 1) return 0;
  int ran = 0;
  for (int32_t step = 0; step < k; step++) {
    int32_t owner = (self + step) % k;
    int32_t lo = range_start(owner, n, k), hi = range_start(owner + 1, n, k);
    _Atomic uint64_t* c = &counters[owner].word;
    for (;;) {
      uint64_t w = atomic_load_explicit(c, memory_order_acquire);
      if ((uint32_t)(w >> 32) != gen || lo + (int32_t)(uint32_t)w >= hi) break;
      if (!atomic_compare_exchange_weak_explicit(c, &w, w + 1, memory_order_acq_rel, memory_order_relaxed)) continue;
      run_one(s, fn, cdata, n, lo + (int32_t)(uint32_t)w, by_worker);
      ran++;
    }
    if ((uint32_t)atomic_load_explicit(&current, memory_order_relaxed) != gen) break;
  }
  return ran;
}

/* Move the calling worker off `cpu` (its caller's): its affinity without `cpu`, which migrates it at once, then
 * its affinity as it was, so that it stays free to go where the scheduler sends it later. */
static void leave_cpu(int cpu) {
#ifdef __linux__
  cpu_set_t mask, others;
  if (cpu < 0 || sched_getaffinity(0, sizeof(mask), &mask) != 0 || !CPU_ISSET(cpu, &mask)) return;
  others = mask;
  CPU_CLR(cpu, &others);
  if (CPU_COUNT(&others) == 0 || sched_setaffinity(0, sizeof(others), &others) != 0) return;
  sched_setaffinity(0, sizeof(mask), &mask);
#else
  (void)cpu;
#endif
}

static void* worker_main(void* arg) {
  int32_t self = (int32_t)(intptr_t)arg; /* thread `self` of the pool; the caller is 0 */
  in_worker = 1;
#ifdef __linux__
  pthread_setname_np(pthread_self(), "tf-pool"); /* how tools (and the tests) tell our workers */
#endif
  uint32_t seen = atomic_load(&current);
  for (;;) {
    int64_t idle_since = 0;
    uint32_t gen;
    for (unsigned spins = 0;; spins++) {
      if (atomic_load_explicit(&stop, memory_order_relaxed)) return NULL;
      gen = atomic_load_explicit(&current, memory_order_acquire);
      if (gen != seen) break;
      if (spins < 64) {
        cpu_relax();
        continue;
      }
      if (!idle_since) idle_since = now_ns();
      if (now_ns() - idle_since < SPIN_NS) {
        if (spins % 16 == 0) sched_yield(); else cpu_relax();
        continue;
      }
      uint32_t ticket = atomic_load(&wake_seq);
      atomic_fetch_add(&sleepers, 1);
      if (atomic_load(&current) == seen && !atomic_load(&stop)) futex_wait(&wake_seq, ticket);
      atomic_fetch_sub(&sleepers, 1);
      idle_since = 0;
      spins = 0;
    }
#ifdef __linux__
    int cpu = sched_getcpu();
    if (cpu >= 0 && cpu == atomic_load_explicit(&caller_cpu, memory_order_relaxed)) leave_cpu(cpu);
#endif
    int ran = run_chunks(gen, self, 1);
    if (ran) atomic_fetch_add_explicit(&stat_chunks_by_workers, ran, memory_order_relaxed);
    seen = gen;
  }
}

static int default_threads(void) {
  long n = sysconf(_SC_NPROCESSORS_ONLN);
#ifdef __linux__
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) n = CPU_COUNT(&set);
#endif
  return n < 1 ? 1 : (n > MAX_THREADS ? MAX_THREADS : (int)n);
}

static void stop_workers(void) {
  if (!started) return;
  atomic_store(&stop, 1);
  atomic_fetch_add(&wake_seq, 1);
  futex_wake_all(&wake_seq);
  for (int i = 0; i < started - 1; i++) pthread_join(workers[i], NULL);
  atomic_store(&stop, 0);
  started = 0;
}

/* Called with setup_lock held and `busy` taken. */
static void start_workers(void) {
  int n = configured > 0 ? configured : default_threads();
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setstacksize(&attr, 8u << 20);
  int made = 1;
  for (int i = 0; i < n - 1; i++) {
    if (pthread_create(&workers[i], &attr, worker_main, (void*)(intptr_t)(i + 1)) != 0) break;
    made++;
  }
  pthread_attr_destroy(&attr);
  started = made;
}

static void after_fork_in_child(void) {
  /* the workers do not exist in a forked child: start anew there */
  started = 0;
  atomic_store(&busy, 0);
  atomic_store(&sleepers, 0);
  pthread_mutex_init(&setup_lock, NULL);
}

static int run_inline(FTVMParallelLambda flambda, void* cdata) {
  TVMParallelGroupEnv env = {NULL, 1};
  atomic_fetch_add_explicit(&stat_inline, 1, memory_order_relaxed);
  return flambda(0, &env, cdata);
}

int tf_pool_launch(FTVMParallelLambda flambda, void* cdata, int num_task) {
  if (in_worker || serial || configured == 1) return run_inline(flambda, cdata);
  if (started > 1 && atomic_load_explicit(&runs, memory_order_relaxed) >= started) return run_inline(flambda, cdata);
  int32_t expected = 0;
  if (!atomic_compare_exchange_strong(&busy, &expected, 1)) return run_inline(flambda, cdata);
  if (!started) {
    static int atfork_registered = 0;
    pthread_mutex_lock(&setup_lock);
    if (!atfork_registered) {
      pthread_atfork(NULL, NULL, after_fork_in_child);
      atfork_registered = 1;
    }
    if (!started) start_workers();
    pthread_mutex_unlock(&setup_lock);
  }
  if (started <= 1) {
    atomic_store(&busy, 0);
    return run_inline(flambda, cdata);
  }
  int32_t n = num_task > 0 ? num_task : started * CHUNKS_PER_THREAD;
  uint32_t gen = ++generation;
  if (gen == 0) gen = ++generation; /* 0 marks a slot being written */
  Slot* s = &slots[gen % NSLOTS];
  atomic_store_explicit(&s->seq, 0, memory_order_relaxed);
  atomic_thread_fence(memory_order_release);
  atomic_store_explicit(&s->fn, flambda, memory_order_relaxed);
  atomic_store_explicit(&s->cdata, cdata, memory_order_relaxed);
  atomic_store_explicit(&s->nchunks, n, memory_order_relaxed);
  atomic_store_explicit(&s->done, 0, memory_order_relaxed);
  atomic_store_explicit(&s->failed, 0, memory_order_relaxed);
  atomic_store_explicit(&s->error, NULL, memory_order_relaxed);
  atomic_store_explicit(&s->seq, gen, memory_order_release);
  atomic_store_explicit(&owners, started, memory_order_relaxed);
  for (int i = 0; i < started; i++) atomic_store_explicit(&counters[i].word, (uint64_t)gen << 32, memory_order_relaxed);
#ifdef __linux__
  atomic_store_explicit(&caller_cpu, sched_getcpu(), memory_order_relaxed);
#endif
  atomic_store(&current, gen);
  if (atomic_load(&sleepers) > 0) {
    atomic_fetch_add(&wake_seq, 1);
    futex_wake_all(&wake_seq);
    sched_yield(); /* a worker woken on this CPU runs now and moves off it (see the top of the file) */
  }
  int ran = run_chunks(gen, 0, 0);
  atomic_fetch_add_explicit(&stat_chunks_by_caller, ran, memory_order_relaxed);
  atomic_fetch_add_explicit(&stat_loops, 1, memory_order_relaxed);
  /* wait for the chunks that workers took and are still running */
  for (unsigned spins = 0; atomic_load_explicit(&s->done, memory_order_acquire) < n; spins++) {
    if (spins < 256) cpu_relax(); else sched_yield();
  }
  int failed = atomic_load(&s->failed);
  TVMFFIObjectHandle err = atomic_exchange(&s->error, NULL);
  atomic_store(&busy, 0);
  if (err) {
    TVMFFIErrorSetRaised(err); /* keeps its own reference */
    TVMFFIObjectDecRef(err);
  }
  return failed ? -1 : 0;
}

/* -- control, called from the runtime through ctypes ------------------------------------------------------------ */
int tf_pool_abi(void) { return TF_POOL_ABI; }

/* The number of threads (the caller included) loops may use; 0: the CPUs this process may run on. Takes effect at
 * once: running workers are stopped and the next loop starts the new number. Returns the previous setting. */
int tf_pool_configure(int num_threads) {
  int32_t expected = 0;
  while (!atomic_compare_exchange_weak(&busy, &expected, 1)) {
    expected = 0;
    sched_yield();
  }
  pthread_mutex_lock(&setup_lock);
  int previous = configured;
  int n = num_threads < 0 ? 0 : (num_threads > MAX_THREADS ? MAX_THREADS : num_threads);
  if (n != configured) {
    stop_workers();
    configured = n;
  }
  pthread_mutex_unlock(&setup_lock);
  atomic_store(&busy, 0);
  return previous;
}

int tf_pool_threads(void) { return started ? started : (configured > 0 ? configured : default_threads()); }

/* Loops launched by the calling thread run on it alone while `on` (small kernels: no hand-out, no wake-ups). */
int tf_pool_set_serial(int on) {
  int previous = serial;
  serial = on;
  return previous;
}

/* Counters for tests and benchmarks: loops run on the pool, loops run inline, chunks run by callers, by workers. */
void tf_pool_stats(int64_t* out) {
  out[0] = atomic_load(&stat_loops);
  out[1] = atomic_load(&stat_inline);
  out[2] = atomic_load(&stat_chunks_by_caller);
  out[3] = atomic_load(&stat_chunks_by_workers);
}

int tf_pool_sleeping(void) { return atomic_load(&sleepers); }

/* A model run starts (+1) or ends (-1); returns the runs in flight. */
int tf_pool_runs(int delta) { return atomic_fetch_add(&runs, delta) + delta; }
