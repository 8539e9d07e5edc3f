"""A server built on the reference, for tether's client.

usage: py_server.py
Prints `PORT <n>` on stderr, accepts one connection, serves the contract
handler, sends two requests of its own to tether's handler (EchoService:
rq_type 1 reverses, rq_type 2 returns flags + 1) and checks them, then
waits for tether's EOF and closes in order. Then it accepts one more
connection, the sessionless kind (a request with EOF right behind it), and
serves it until its EOF. Exit status 0 on success.
"""

import socket
import sys

from cs.upd import Upd

Upd().open()

from cs.packetstream import PacketConnection  # noqa: E402

from common import contract_handler, die, log  # noqa: E402


def accept(lsock, name):
    """The next connection, served by the reference with the contract handler."""
    sock, _ = lsock.accept()
    conn = PacketConnection(
        (sock.fileno(), sock.fileno()),
        name,
        request_handler=contract_handler,
        packet_grace=0,
    )
    return sock, conn


def main():
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)
    log("PORT", lsock.getsockname()[1])
    sock, conn = accept(lsock, "pyserver")
    with conn:
        got = conn.submit(1, 0, b"hello from python")()
        if tuple(got) != (True, 0, b"nohtyp morf olleh"):
            die("request to tether rq_type 1: %r" % (got,))
        got = conn.submit(2, 2**40, b"x")()
        if tuple(got) != (True, 2**40 + 1, b"x"):
            die("request to tether rq_type 2: %r" % (got,))
        log("PYSERVER REQUESTS OK")
        conn.join_recv()
    sock.close()
    log("PYSERVER OK")
    sock, conn = accept(lsock, "pyserver-once")
    with conn:
        conn.join_recv()
    sock.close()
    log("PYSERVER ONCE OK")


if __name__ == "__main__":
    try:
        main()
    except SystemExit:
        raise
    except BaseException as e:  # noqa: BLE001
        die(repr(e))
