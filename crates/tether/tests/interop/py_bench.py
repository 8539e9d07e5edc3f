"""The reference's sequential request rate (W1-like: 64-byte echo, one
connection), reference client against a reference server, each in its own
process, with the default packet_grace and with packet_grace=0.

usage: py_bench.py [N] [--tether-port PORT]
Prints one `workload=rtt impl=...` line per run on stderr (stdout carries
the reference's progress output). With --tether-port, also runs the
reference client against a tether packet server already listening there.
"""

import os
import socket
import subprocess
import sys
import time

from cs.upd import Upd

Upd().open()

from cs.packetstream import PacketConnection  # noqa: E402


def echo(rq_type, flags, payload):
    return payload


def serve(grace):
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)
    print("PORT", lsock.getsockname()[1], file=sys.stderr, flush=True)
    sock, _ = lsock.accept()
    conn = PacketConnection((sock.fileno(), sock.fileno()), "bench-server", request_handler=echo, packet_grace=grace)
    with conn:
        conn.join_recv()
    sock.close()


def client(port, grace, n, label):
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    conn = PacketConnection((sock.fileno(), sock.fileno()), "bench-client", packet_grace=grace)
    payload = b"x" * 64
    lat = []
    with conn:
        for _ in range(max(1, n // 20)):
            conn(0, payload)
        t0 = time.perf_counter()
        for _ in range(n):
            t = time.perf_counter()
            ok, flags, got = conn(0, payload)
            lat.append(time.perf_counter() - t)
            assert ok and got == payload
        total = time.perf_counter() - t0
    sock.close()
    lat.sort()
    print(
        "workload=rtt impl=%s requests=%d req_s=%.0f p50_us=%.1f p99_us=%.1f"
        % (label, n, n / total, lat[len(lat) // 2] * 1e6, lat[int(len(lat) * 0.99)] * 1e6),
        file=sys.stderr,
        flush=True,
    )


def run_pair(grace, n, label):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    srv = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(grace)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    port = None
    for line in srv.stderr:
        line = line.decode(errors="replace")
        if line.startswith("PORT "):
            port = int(line.split()[1])
            break
    client(port, grace, n, label)
    srv.wait(timeout=60)


def main():
    if sys.argv[1:2] == ["--serve"]:
        serve(float(sys.argv[2]))
        return
    args = sys.argv[1:]
    n = int(args[0]) if args and args[0].isdigit() else 2000
    run_pair(0.01, max(50, n // 40), "python-reference-grace-10ms")
    run_pair(0, n, "python-reference-grace-0")
    if "--tether-port" in args:
        port = int(args[args.index("--tether-port") + 1])
        client(port, 0, n, "python-client-grace-0-vs-tether-server")


if __name__ == "__main__":
    main()
