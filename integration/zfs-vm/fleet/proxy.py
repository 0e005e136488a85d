#!/usr/bin/env python3
"""A TCP proxy that corrupts one byte in transit, once.

    proxy.py LISTEN_PORT TARGET_PORT FLIP_AT [LOG]

Listens on 127.0.0.1:LISTEN_PORT and forwards every connection to
127.0.0.1:TARGET_PORT, both ways. The byte at offset FLIP_AT of the
client-to-server direction (the sender's TLS records: past the handshake when
FLIP_AT is large enough) is XORed with 0xff on the first connection that gets
that far, and only there: connections that end earlier (a sender that could
not reach the target yet) do not use up the flip, and every later connection
passes unchanged. Each event
(connection, flip, close with byte counts) is one line in LOG (stderr when
none), flushed at once, so a test can wait for "flipped".

Standard library only. Runs until killed.
"""
import socket
import sys
import threading
import time

lock = threading.Lock()
conn_count = 0
flipped = False


def say(log, msg):
    line = f"{time.strftime('%H:%M:%S')} {msg}\n"
    with lock:
        log.write(line)
        log.flush()


def pump(src, dst, log, label, flip_at):
    """Copies src to dst; flips the byte at offset flip_at (None: never)."""
    global flipped
    total = 0
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            if flip_at is not None and total <= flip_at < total + len(data):
                with lock:
                    do = not flipped
                    flipped = True
                if do:
                    buf = bytearray(data)
                    i = flip_at - total
                    buf[i] ^= 0xFF
                    data = bytes(buf)
                    say(log, f"{label}: flipped the byte at offset {flip_at}")
            dst.sendall(data)
            total += len(data)
    except OSError as e:
        say(log, f"{label}: {e}")
    finally:
        say(log, f"{label}: closed after {total} bytes")
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def serve(client, target_port, flip_at, log, n):
    try:
        upstream = socket.create_connection(("127.0.0.1", target_port), timeout=10)
        upstream.settimeout(None)
    except OSError as e:
        say(log, f"conn {n}: cannot reach 127.0.0.1:{target_port}: {e}")
        client.close()
        return
    say(log, f"conn {n}: open")
    a = threading.Thread(target=pump, args=(client, upstream, log, f"conn {n} c->s", flip_at), daemon=True)
    b = threading.Thread(target=pump, args=(upstream, client, log, f"conn {n} s->c", None), daemon=True)
    a.start()
    b.start()
    a.join()
    b.join()
    client.close()
    upstream.close()


def main():
    global conn_count
    if len(sys.argv) not in (4, 5):
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    listen_port, target_port, flip_at = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    log = open(sys.argv[4], "a") if len(sys.argv) == 5 else sys.stderr
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", listen_port))
    ls.listen(16)
    say(log, f"listening on 127.0.0.1:{listen_port} -> 127.0.0.1:{target_port}, flipping the byte at {flip_at} once")
    while True:
        client, _ = ls.accept()
        conn_count += 1
        n = conn_count
        threading.Thread(target=serve, args=(client, target_port, flip_at, log, n),
                         daemon=True).start()


if __name__ == "__main__":
    main()
