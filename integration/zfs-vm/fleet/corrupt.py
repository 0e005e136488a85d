#!/usr/bin/env python3
"""Damage a file's data blocks inside a file vdev, for the zfs-vm drill checks.

    corrupt.py IMAGE FILE OFFSET...

For each OFFSET (bytes into FILE, the start of a record), takes FILE's 64
bytes there as a needle, finds it in IMAGE (the vdev of an EXPORTED pool)
and inverts the 4096 bytes that start there, so the record's checksum can
no longer match. Only data is touched: the needle is random file content,
and each must occur exactly once in IMAGE (else nothing is written and the
exit code is 1). Prints "OFFSET -> VDEV_OFFSET" per needle.

Only the allocated parts of the sparse IMAGE are read (SEEK_DATA/SEEK_HOLE),
since a scan of the whole file is slow under emulation.
"""
import os
import sys

NEEDLE = 64
SPAN = 4096
CHUNK = 16 << 20


def data_ranges(fd, size):
    """(start, end) of every allocated range of the file."""
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError:
            return
        end = os.lseek(fd, start, os.SEEK_HOLE)
        yield start, end
        pos = end


def find_all(image, needles):
    """{needle: [offsets in image]}"""
    hits = {n: [] for n in needles}
    fd = os.open(image, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        for start, end in data_ranges(fd, size):
            pos = start
            while pos < end:
                # Read a needle's length past the chunk, so that none is
                # missed at a boundary; a hit is counted by the chunk it starts in.
                buf = os.pread(fd, min(CHUNK + NEEDLE - 1, end - pos), pos)
                for needle in needles:
                    i = buf.find(needle)
                    while -1 < i < CHUNK:
                        hits[needle].append(pos + i)
                        i = buf.find(needle, i + 1)
                pos += CHUNK
    finally:
        os.close(fd)
    return hits


def main():
    if len(sys.argv) < 4:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    image, path, offsets = sys.argv[1], sys.argv[2], [int(x) for x in sys.argv[3:]]
    with open(path, "rb") as f:
        needles = []
        for off in offsets:
            f.seek(off)
            needles.append(f.read(NEEDLE))
    if any(len(n) != NEEDLE for n in needles):
        print(f"corrupt.py: {path} is shorter than an offset + {NEEDLE}", file=sys.stderr)
        sys.exit(1)
    hits = find_all(image, needles)
    bad = [(off, len(hits[n])) for off, n in zip(offsets, needles) if len(hits[n]) != 1]
    if bad:
        for off, count in bad:
            print(f"corrupt.py: {path} at {off} occurs {count} times in {image}, not once; nothing written",
                  file=sys.stderr)
        sys.exit(1)
    with open(image, "r+b") as f:
        for off, needle in zip(offsets, needles):
            at = hits[needle][0]
            f.seek(at)
            old = f.read(SPAN)
            f.seek(at)
            f.write(bytes(b ^ 0xFF for b in old))
            print(f"{off} -> {at}")
        f.flush()
        os.fsync(f.fileno())


if __name__ == "__main__":
    main()
