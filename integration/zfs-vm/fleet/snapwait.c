/* snapwait SNAPSHOT TIMEOUT: waits until SNAPSHOT exists, looking every 0.5 s
 * with lzc_exists (one ioctl), for at most TIMEOUT seconds. Exit 0 when it
 * exists, 1 on timeout. The catch-up benchmark's observer: a `zfs list` per
 * second would start a process each time and load the guest it measures.
 * Every 0.1 s cost a bare `zfs send -I | zfs recv` 3-9 % in the emulated
 * guest (lzc_exists gathers every property of the snapshot).
 * Built on the host like snapwrite.c. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <libzfs_core.h>

int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: snapwait SNAPSHOT TIMEOUT\n"); return 2; }
    if (libzfs_core_init() != 0) { perror("libzfs_core_init"); return 2; }
    long polls = atol(argv[2]) * 2;
    struct timespec half = { 0, 500 * 1000 * 1000 };
    for (long i = 0; i <= polls; i++) {
        if (lzc_exists(argv[1])) { libzfs_core_fini(); return 0; }
        nanosleep(&half, NULL);
    }
    libzfs_core_fini();
    return 1;
}
