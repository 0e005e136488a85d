/* snapwrite FS DIR FIRST COUNT: for i in FIRST..FIRST+COUNT-1, writes a small
 * file DIR/f<i> (4 KiB, its content depends on i) and then snapshots
 * FS@s<i> (5 digits) with one lzc_snapshot call, so no snapshot is empty.
 * One process for all of them: a `zfs snapshot` per snapshot costs a process
 * start each under emulation. Built on the host by the scripts that use it
 * (gcc and libzfslinux-dev, which `zfs-vm.sh setup` installs). */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <libzfs_core.h>
#include <libnvpair.h>

int main(int argc, char **argv) {
    if (argc != 5) { fprintf(stderr, "usage: snapwrite FS DIR FIRST COUNT\n"); return 2; }
    if (libzfs_core_init() != 0) { perror("libzfs_core_init"); return 1; }
    long first = atol(argv[3]), count = atol(argv[4]);
    char name[512], path[4096], buf[4096];
    for (long i = first; i < first + count; i++) {
        snprintf(path, sizeof path, "%s/f%05ld", argv[2], i);
        for (size_t k = 0; k < sizeof buf; k++) buf[k] = (char)('a' + (i * 31 + k * 7) % 26);
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd < 0 || write(fd, buf, sizeof buf) != (ssize_t)sizeof buf || close(fd) != 0) {
            perror(path); return 1;
        }
        nvlist_t *snaps = fnvlist_alloc(), *errs = NULL;
        snprintf(name, sizeof name, "%s@s%05ld", argv[1], i);
        fnvlist_add_boolean(snaps, name);
        int e = lzc_snapshot(snaps, NULL, &errs);
        if (e != 0) { fprintf(stderr, "lzc_snapshot %s: error %d\n", name, e); return 1; }
        fnvlist_free(snaps);
        if (errs) fnvlist_free(errs);
    }
    libzfs_core_fini();
    return 0;
}
