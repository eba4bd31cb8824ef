/* How long `rep movsb` takes to copy a response-sized buffer, by where the destination lies
 * relative to the source modulo 64 bytes (BENCHMARKS.md §24). Linux copies a send() or
 * writev() into the socket buffer with `rep movsb` on CPUs with FSRM, so this is the kernel's
 * cost of copying each iovec of an answer.
 *
 *     gcc -O2 bench/rep_movsb.c -o /tmp/rep_movsb && /tmp/rep_movsb [BYTES]   # default 672
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static inline void rep_movsb(void *d, const void *s, size_t n) {
    asm volatile("rep movsb" : "+D"(d), "+S"(s), "+c"(n)::"memory");
}

static double now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e9 + t.tv_nsec;
}

int main(int argc, char **argv) {
    size_t n = argc > 1 ? (size_t)atol(argv[1]) : 672;
    char *src = aligned_alloc(4096, 1 << 20), *dst = aligned_alloc(4096, 1 << 20);
    memset(src, 1, 1 << 20);
    memset(dst, 2, 1 << 20);
    printf("rep movsb of %zu bytes, ns per copy, by (dst - src) mod 64:\n", n);
    for (int d = 0; d < 64; d++) {
        const int reps = 50000;
        double t0 = now_ns();
        for (int r = 0; r < reps; r++) rep_movsb(dst + 8192 + d, src, n);
        printf("%2d:%6.1f%s", d, (now_ns() - t0) / reps, d % 8 == 7 ? "\n" : "  ");
    }
    return 0;
}
