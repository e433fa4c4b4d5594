"""Blocking duplex streams, as threaded Python programs write them.

    duplex.py server|client ADDR PORT CONNS BYTES

Every connection moves BYTES each way at once: one thread writes with
sendall, another reads with recv, both on the same blocking socket (no
timeout). The client first sends the connection's index (4 bytes), so both
ends know which pattern the other sends; each end checks the md5 of what
it read against the pattern's. Any exception fails the run (exit 1).
"""
import hashlib
import random
import socket
import struct
import sys
import threading

BLOCK = 1 << 20


def pattern(seed):
    return random.Random(seed).randbytes(BLOCK)


def expected_md5(seed, n):
    block, h, left = pattern(seed), hashlib.md5(), n
    while left > 0:
        h.update(block[: min(left, BLOCK)])
        left -= BLOCK
    return h.hexdigest()


def write(sock, seed, n, errors):
    try:
        block, off, left = memoryview(pattern(seed)), 0, n
        while left > 0:
            k = min(left, 65536, BLOCK - off)
            sock.sendall(block[off : off + k])
            off, left = (off + k) % BLOCK, left - k
        sock.shutdown(socket.SHUT_WR)
    except Exception as e:  # noqa: BLE001 - every failure counts
        errors.append(f"writer: {e!r}")


def read(sock, n, seed, errors):
    h, got = hashlib.md5(), 0
    try:
        while True:
            b = sock.recv(65536)
            if not b:
                break
            h.update(b)
            got += len(b)
    except Exception as e:  # noqa: BLE001
        errors.append(f"reader: {e!r}")
        return
    if got != n or h.hexdigest() != expected_md5(seed, n):
        errors.append(f"reader: got {got} bytes md5 {h.hexdigest()}, want {n} bytes md5 {expected_md5(seed, n)}")


def duplex(sock, send_seed, recv_seed, n):
    errors = []
    # The writer repeats one BLOCK of pattern, so the reader's expected
    # md5 is cheap to recompute.
    w = threading.Thread(target=write, args=(sock, send_seed, n, errors))
    rd = threading.Thread(target=read, args=(sock, n, recv_seed, errors))
    w.start()
    rd.start()
    w.join()
    rd.join()
    sock.close()
    return errors


def recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        b = sock.recv(n - len(buf))
        if not b:
            raise EOFError("connection closed in the header")
        buf += b
    return buf


def main():
    mode, addr, port, conns, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    results = [None] * conns
    threads = []
    if mode == "server":
        ls = socket.socket(fam, socket.SOCK_STREAM)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind((addr, port))
        ls.listen(conns)

        def serve(s):
            (i,) = struct.unpack("!I", recv_exact(s, 4))
            results[i] = duplex(s, 2 * i + 1, 2 * i, n)

        for _ in range(conns):
            s, _ = ls.accept()
            t = threading.Thread(target=serve, args=(s,))
            t.start()
            threads.append(t)
    else:
        def connect(i):
            s = socket.create_connection((addr, port))
            s.sendall(struct.pack("!I", i))
            results[i] = duplex(s, 2 * i, 2 * i + 1, n)

        for i in range(conns):
            t = threading.Thread(target=connect, args=(i,))
            t.start()
            threads.append(t)
    for t in threads:
        t.join()
    bad = [(i, r) for i, r in enumerate(results) if r is None or r]
    for i, r in bad:
        print(f"connection {i}: {r}", file=sys.stderr)
    print(f"{conns - len(bad)} of {conns} connections intact, {n} bytes each way")
    sys.exit(1 if bad else 0)


main()
