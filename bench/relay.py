"""A TCP relay that adds a fixed one-way delay: the benchmark's stand-in for
a long link where the kernel has no netem.

    python bench/relay.py LISTEN_PORT TARGET_HOST TARGET_PORT ONE_WAY_DELAY_MS

Listens on 127.0.0.1. Each direction of each connection has a reader that
stamps every chunk with the time it may leave and a writer that sends it
then: chunks are pipelined, so the delay adds latency without capping
throughput (a relay that sleeps per chunk before reading the next one would
cap it at chunk size / delay). Large reads keep the per-chunk cost low
enough for a gigabit. Runs until killed.
"""

from __future__ import annotations

import collections
import socket
import sys
import threading
import time

CHUNK = 1 << 20
MAX_QUEUED = 64 << 20  # per direction: bounds memory if the far side stalls


class Pipe:
    def __init__(self, src: socket.socket, dst: socket.socket, delay: float):
        self.src, self.dst, self.delay = src, dst, delay
        self.queue: collections.deque[tuple[float, bytes]] = collections.deque()
        self.queued = 0
        self.cond = threading.Condition()
        self.closed = False

    def read(self) -> None:
        buf = bytearray(CHUNK)
        try:
            while True:
                n = self.src.recv_into(buf)
                if not n:
                    break
                with self.cond:
                    while self.queued > MAX_QUEUED:
                        self.cond.wait()
                    self.queue.append((time.monotonic() + self.delay, bytes(buf[:n])))
                    self.queued += n
                    self.cond.notify_all()
        except OSError:
            pass
        with self.cond:
            self.closed = True
            self.cond.notify_all()

    def write(self) -> None:
        try:
            while True:
                with self.cond:
                    while not self.queue and not self.closed:
                        self.cond.wait()
                    if not self.queue:
                        break
                    due, data = self.queue.popleft()
                    self.queued -= len(data)
                    self.cond.notify_all()
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                self.dst.sendall(data)
            self.dst.shutdown(socket.SHUT_WR)
        except OSError:
            self.src.close()


def serve(listen_port: int, target: tuple[str, int], delay: float) -> None:
    server = socket.create_server(("127.0.0.1", listen_port))
    print("ready", flush=True)
    while True:
        client, _ = server.accept()
        try:
            upstream = socket.create_connection(target, timeout=10)
            upstream.settimeout(None)
        except OSError:
            client.close()
            continue
        for s in (client, upstream):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for a, b in ((client, upstream), (upstream, client)):
            pipe = Pipe(a, b, delay)
            threading.Thread(target=pipe.read, daemon=True).start()
            threading.Thread(target=pipe.write, daemon=True).start()


if __name__ == "__main__":
    port, host, tport, ms = sys.argv[1:5]
    serve(int(port), (host, int(tport)), float(ms) / 1000)
