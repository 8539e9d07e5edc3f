"""Shared by the interop peers: the contract handler and the checks.

The handler is the `tether serve packet` contract: rq_type 0 echo,
1 reversed, 2 flags + 1, 3 failure, 4 sleep `payload` ms then echo,
anything else a failure (raising makes the reference send
`exception during handler`).
"""

import random
import sys
import time

FAIL = (False, 0, b"exception during handler")


def contract_handler(rq_type, flags, payload):
    if rq_type == 0:
        return payload
    if rq_type == 1:
        return payload[::-1]
    if rq_type == 2:
        return (flags + 1, payload)
    if rq_type == 4:
        time.sleep(int(payload.decode("ascii")) / 1000.0)
        return payload
    raise ValueError("rq_type %d fails by contract" % rq_type)


FLAGS = [0, 1, 31, 32, 127, 128, 300, 16383, 16384, 2**20, 2**32, 2**40, 2**55, 2**60]
SIZES = [0, 1, 5, 127, 128, 300, 16383, 16384, 65535, 65536]


def cases(seed, n):
    """(rq_type, flags, payload, expected (ok, flags, payload)) tuples."""
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        rq_type = [0, 1, 2, 3, 4, 9][i % 6]
        flags = rnd.choice(FLAGS) if rnd.random() < 0.5 else rnd.randrange(0, 2**60)
        if rq_type == 4:
            payload = str(rnd.randrange(0, 20)).encode("ascii")
        else:
            size = rnd.choice(SIZES) if rnd.random() < 0.3 else rnd.randrange(0, 65537)
            payload = rnd.randbytes(size)
        if rq_type == 0:
            want = (True, 0, payload)
        elif rq_type == 1:
            want = (True, 0, payload[::-1])
        elif rq_type == 2:
            want = (True, flags + 1, payload)
        elif rq_type == 4:
            want = (True, 0, payload)
        else:
            want = FAIL
        out.append((rq_type, flags, payload, want))
    return out


def run_checks(conn, seed=1, n=384, in_flight=64):
    """Submits the cases `in_flight` at a time and checks every response."""
    todo = cases(seed, n)
    for start in range(0, n, in_flight):
        batch = todo[start:start + in_flight]
        results = [conn.submit(rq_type, flags, payload) for rq_type, flags, payload, _ in batch]
        for (rq_type, flags, payload, want), R in zip(batch, results):
            got = R()
            got = (bool(got[0]), got[1], bytes(got[2]))
            if got != want:
                die("rq_type=%d flags=%d len=%d: got %r want %r" % (
                    rq_type, flags, len(payload), short(got), short(want)))
    return n


def short(t):
    ok, flags, payload = t
    return (ok, flags, payload[:16], len(payload))


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def die(msg):
    log("INTEROP FAILURE:", msg)
    sys.exit(1)
