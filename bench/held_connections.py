#!/usr/bin/env python
"""Whether idle keep-alive connections and slow clients hold up other requests, per WSGI server.

    python bench/held_connections.py            # gunicorn, granian, pyuwsgi

Each server runs the bare WSGI callable (bench/floor_app.py) in one worker
of 4 threads. 8 connections are opened and held: either idle keep-alive
connections (one request answered, then nothing), or clients that never
finish sending their request. Then one more request is timed: it should
not wait for any of them. Behind HAProxy, idle connections are its pool of
reused connections to the app host; on the internet, slow clients are
anyone on a bad network (or an attack).
"""

import argparse
import http.client
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# bench/ last on the path (it is the script's own directory only when run as a script; tests import bench.capacity):
# its scripts named like the apps (bench/admission.py, bench/campaigns.py) must not shadow them.
sys.path.append(str(ROOT / "bench"))

from cpu_per_request import FLOOR, server_arguments  # noqa: E402

from tests.helpers import free_port  # noqa: E402

THREADS = 4
HELD = 8
TIMEOUT_SECONDS = 40


def held_connection(port, kind):
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_SECONDS)
    if kind == "idle":
        sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        sock.recv(4096)
    else:  # a slow client: its headers never end
        sock.sendall(b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 10\r\n")
    return sock


def probe(server, kind):
    port = free_port()
    command, extra = server_arguments(server, FLOOR, port, 1, THREADS)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT / "bench"), **extra}
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit(f"{server} did not come up") from None
                time.sleep(0.1)
        held = [held_connection(port, kind) for _ in range(HELD)]
        started = time.monotonic()
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT_SECONDS)
            connection.request("GET", "/")
            status = connection.getresponse().status
        except OSError as exc:
            status = type(exc).__name__
        waited = time.monotonic() - started
        for sock in held:
            sock.close()
        return status, waited
    finally:
        process.terminate()
        process.wait()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", default="gunicorn,granian,pyuwsgi")
    options = parser.parse_args()
    print(f"one request behind {HELD} held connections, {THREADS} threads (seconds it waited, status)")
    for server in options.servers.split(","):
        for kind in ("idle", "slow"):
            status, waited = probe(server, kind)
            print(f"{server:<10} {kind:<5} {waited:7.3f} s  {status}")


if __name__ == "__main__":
    main()
