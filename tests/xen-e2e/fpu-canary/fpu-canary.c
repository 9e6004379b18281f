/*
 * fpu-canary: does this vCPU see its own SSE registers?
 *
 * Each worker process keeps a pattern of its own in %xmm0, spins on integer-only work (so the
 * hypervisor may switch vCPUs meanwhile), then executes ONE SSE instruction that moves register
 * contents into a general register or the flags, and checks the result. With lazy FPU
 * switching the first SSE instruction after a vCPU switch must raise #NM so that the hypervisor
 * restores this vCPU's registers; an instruction that runs without that trap computes on the
 * previous vCPU's registers, and the check fails. The instruction classes are counted apart.
 *
 * Usage: fpu-canary SECONDS WORKERS   -> one line "checks=N bad=M [class=bad ...]"; exit 1 if
 * any check failed. Built statically on the host (gcc -O1 -static -msse4.2).
 */
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

enum { MOVQ, PEXTRQ, PTEST, PCMPISTRI, NCLASS };
static const char *names[NCLASS] = { "movq", "pextrq", "ptest", "pcmpistri" };

struct counts { volatile uint64_t checks[NCLASS], bad[NCLASS]; };

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void spin(unsigned n)
{
    for (volatile unsigned i = 0; i < n; i++)
        ;
}

static void worker(struct counts *c, int id, double end)
{
    /* Non-zero, no zero byte (pcmpistri stops at one), distinct per worker. */
    uint64_t lo = 0x1111111111111111ull * (uint64_t)(1 + id % 14) | 0x0101010101010101ull;
    uint64_t pat[2] = { lo, lo ^ 0x2020202020202020ull };
    unsigned long k = 0;
    uint32_t want_idx;

    /* pcmpistri's answer for this pattern, taken once with no spin in between. */
    __asm__ volatile("movdqu %1, %%xmm0; pcmpistri $0x40, %%xmm0, %%xmm0; mov %%ecx, %0"
                     : "=r"(want_idx) : "m"(pat) : "xmm0", "ecx", "cc");

    while (now() < end) {
        int cls = (int)(k++ % NCLASS);
        uint64_t out = 0;
        int ok;

        __asm__ volatile("movdqu %0, %%xmm0" : : "m"(pat) : "xmm0");
        spin(20000);
        switch (cls) {
        case MOVQ:      /* 66 REX.W 0F 7E: the classic SSE2 decoder */
            __asm__ volatile("movq %%xmm0, %0" : "=r"(out));
            ok = out == pat[0];
            break;
        case PEXTRQ:    /* 66 REX.W 0F 3A 16: SSE4.1 */
            __asm__ volatile("pextrq $1, %%xmm0, %0" : "=r"(out));
            ok = out == pat[1];
            break;
        case PTEST: {   /* 66 0F 38 17: SSE4.1, result in ZF (xmm0 & xmm0 == 0?) */
            uint8_t zf;
            __asm__ volatile("ptest %%xmm0, %%xmm0; setz %0" : "=r"(zf) : : "cc");
            ok = zf == 0;
            break;
        }
        default: {      /* 66 0F 3A 63: SSE4.2, an index computed from xmm0 */
            uint32_t idx;
            __asm__ volatile("pcmpistri $0x40, %%xmm0, %%xmm0; mov %%ecx, %0"
                             : "=r"(idx) : : "ecx", "cc");
            ok = idx == want_idx;
            break;
        }
        }
        __sync_fetch_and_add(&c->checks[cls], 1);
        if (!ok)
            __sync_fetch_and_add(&c->bad[cls], 1);
    }
}

int main(int argc, char **argv)
{
    double secs = argc > 1 ? atof(argv[1]) : 10;
    int workers = argc > 2 ? atoi(argv[2]) : 2;
    struct counts *c = mmap(NULL, sizeof *c, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    double end = now() + secs;
    uint64_t checks = 0, bad = 0;

    if (c == MAP_FAILED || workers < 1 || workers > 64)
        return 2;
    memset((void *)c, 0, sizeof *c);
    for (int i = 0; i < workers; i++) {
        pid_t p = fork();
        if (p == 0) {
            worker(c, i, end);
            _exit(0);
        }
    }
    while (wait(NULL) > 0)
        ;
    for (int i = 0; i < NCLASS; i++) {
        checks += c->checks[i];
        bad += c->bad[i];
    }
    printf("checks=%llu bad=%llu", (unsigned long long)checks, (unsigned long long)bad);
    for (int i = 0; i < NCLASS; i++)
        printf(" %s=%llu/%llu", names[i], (unsigned long long)c->bad[i], (unsigned long long)c->checks[i]);
    printf("\n");
    return bad ? 1 : 0;
}
