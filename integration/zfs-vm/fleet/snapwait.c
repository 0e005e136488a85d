/* snapwait SNAPSHOT TIMEOUT: waits until SNAPSHOT exists, looking every 0.1 s
 * with lzc_exists (one ioctl), for at most TIMEOUT seconds. Exit 0 when it
 * exists, 1 on timeout. The catch-up benchmark's observer: a `zfs list` per
 * second would start a process each time and load the guest it measures.
 * Built on the host like snapwrite.c. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <libzfs_core.h>

int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: snapwait SNAPSHOT TIMEOUT\n"); return 2; }
    if (libzfs_core_init() != 0) { perror("libzfs_core_init"); return 2; }
    long polls = atol(argv[2]) * 10;
    struct timespec tenth = { 0, 100 * 1000 * 1000 };
    for (long i = 0; i <= polls; i++) {
        if (lzc_exists(argv[1])) { libzfs_core_fini(); return 0; }
        nanosleep(&tenth, NULL);
    }
    libzfs_core_fini();
    return 1;
}
