"""The reference as a client against a tether packet server.

usage: py_client.py PORT
Runs every case of common.cases (all rq_types, random flags, payloads
0..64 KiB, 64 in flight), checks each response exactly, then leaves the
`with` block: ERQ, EOF, and waits for tether's EOF. Exit status 0 on success.
"""

import socket
import sys

from cs.upd import Upd

# Holding the status line open avoids the reference's progress deadlock.
Upd().open()

from cs.packetstream import PacketConnection  # noqa: E402

from common import die, log, run_checks  # noqa: E402


def main():
    port = int(sys.argv[1])
    sock = socket.create_connection(("127.0.0.1", port))
    conn = PacketConnection((sock.fileno(), sock.fileno()), "pyclient", packet_grace=0)
    with conn:
        n = run_checks(conn, seed=11)
        log("checked", n, "responses")
    # leaving `with` sent ERQ and EOF and waited for tether's EOF
    sock.close()
    log("PYCLIENT OK")


if __name__ == "__main__":
    try:
        main()
    except SystemExit:
        raise
    except BaseException as e:  # noqa: BLE001
        die(repr(e))
