/* A sense-reversing spin barrier for the threads of the training loop.
 *
 * The loop's threads meet twice per step, a few microseconds apart; an OpenMP
 * barrier inside a Cython prange cannot be written, and a futex-based one
 * costs a system call per wait. Waiters spin with a pause instruction, then
 * yield their core (so that on an oversubscribed machine the thread they wait
 * for can run). Built with GCC or clang (the __atomic builtins) only;
 * elsewhere FM_HAVE_BARRIER is 0 and the loop runs on one thread. */
#ifndef FASTMLP_BARRIER_H
#define FASTMLP_BARRIER_H

/* The size of the current OpenMP team (1 in a build without OpenMP, where a
 * Cython parallel block runs on the calling thread alone). */
#ifdef _OPENMP
#include <omp.h>
#define FM_HAVE_OPENMP 1
#define fm_team_size() omp_get_num_threads()
#else
#define FM_HAVE_OPENMP 0
#define fm_team_size() 1
#endif

#if defined(__GNUC__)
#define FM_HAVE_BARRIER 1
#include <sched.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define FM_PAUSE() _mm_pause()
#elif defined(__aarch64__)
#define FM_PAUSE() __asm__ __volatile__("yield")
#else
#define FM_PAUSE() ((void)0)
#endif

typedef struct {
    int n;      /* threads that meet */
    int count;  /* arrived in this round */
    int sense;  /* flips when a round completes */
} fm_barrier;

static inline void fm_barrier_init(fm_barrier *b, int n) {
    b->n = n;
    b->count = 0;
    b->sense = 0;
}

/* *local is the caller's own sense, 0 before its first wait. Every write a
 * thread made before its wait is visible to every thread after theirs. */
static inline void fm_barrier_wait(fm_barrier *b, int *local) {
    int s = !*local;
    int spins = 0;
    *local = s;
    if (b->n <= 1)
        return;
    if (__atomic_add_fetch(&b->count, 1, __ATOMIC_ACQ_REL) == b->n) {
        __atomic_store_n(&b->count, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&b->sense, s, __ATOMIC_RELEASE);
        return;
    }
    while (__atomic_load_n(&b->sense, __ATOMIC_ACQUIRE) != s) {
        if (++spins < 4000) {
            FM_PAUSE();
        } else {
            sched_yield();
        }
    }
}
#else
#define FM_HAVE_BARRIER 0
typedef struct { int n; } fm_barrier;
static inline void fm_barrier_init(fm_barrier *b, int n) { b->n = n; }
static inline void fm_barrier_wait(fm_barrier *b, int *local) { (void)b; (void)local; }
#endif

#endif
