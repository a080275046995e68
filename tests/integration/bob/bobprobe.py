"""Socket probes for the bob firewall test, run inside a test's network namespace (`ip netns exec NS python3 bobprobe.py`).

serve HOST:PROTO:PORT...   listen there; print "ready", then one line per arrival ("tcp PORT SRCPORT" when a
                      connection is accepted, "udp PORT SRCPORT" when a datagram arrives; each datagram is echoed back from the same socket,
                      so a reply leaves with the listening port as its source). Runs until stdin closes.
probe [BIND_PORT@]HOST:PROTO:PORT...   try each at once (bounded by TIMEOUT); print "TARGET open|refused|closed"
                      (tcp: the handshake completed or a reset came back; udp: an echo came back, or an ICMP error). BIND_PORT: the local source port.
echo HOST:PORT [DELAY] a TCP echo server (one thread per connection) that answers DELAY seconds after it read
                      (default 0: at once); print "ready"; runs until stdin closes.
hold HOST:PORT [WAIT]  connect, print "connected"; then for each stdin line X send it and print "echo X" if it came
                      back within WAIT seconds (default TIMEOUT), else "none".
Stdlib only; every wait is bounded.
"""

from __future__ import annotations

import contextlib
import select
import socket
import sys
import threading
import time

TIMEOUT = 1.5


def serve(specs: list[str]) -> None:
    socks = {}
    for spec in specs:
        host, proto, port = spec.split(":")
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, int(port)))  # one address: a UDP echo leaves from the address the datagram was sent to
        if proto == "tcp":
            s.listen(16)
        socks[s] = (proto, int(port))
    print("ready", flush=True)
    while True:
        ready, _, _ = select.select([*socks, sys.stdin], [], [], 30)
        if not ready:
            return
        for s in ready:
            if s is sys.stdin:
                return
            proto, port = socks[s]
            if proto == "tcp":
                conn, peer = s.accept()
                conn.close()
            else:
                data, peer = s.recvfrom(2048)
                with contextlib.suppress(OSError):  # EPERM: the firewall dropped the echo
                    s.sendto(data, peer)
            print(f"{proto} {port} {peer[1]}", flush=True)  # the sender's source port last


def _one(target: str, out: dict[str, str]) -> None:
    bind_port = 0
    if "@" in target:
        first, target_rest = target.split("@", 1)
        bind_port, target = int(first), target_rest
    host, proto, port = target.split(":")
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", bind_port))
    s.settimeout(TIMEOUT)
    result = "closed"
    try:
        if proto == "tcp":
            s.connect((host, int(port)))
        else:  # connected: an ICMP port unreachable that comes back fails the recv with ECONNREFUSED
            s.connect((host, int(port)))
            s.send(b"probe")
            s.recv(2048)
        result = "open"
    except ConnectionRefusedError:
        result = "refused"
    except OSError:
        pass
    finally:
        s.close()
    out[target if not bind_port else f"{bind_port}@{target}"] = result


def probe(targets: list[str]) -> None:
    out: dict[str, str] = {}
    threads = [threading.Thread(target=_one, args=(t, out)) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT + 2)
    for target in targets:
        print(target, out.get(target, "closed"))


def echo(specs: list[str]) -> None:
    host, port = specs[0].split(":")
    delay = float(specs[1]) if len(specs) > 1 else 0.0
    srv = socket.create_server((host, int(port)), reuse_port=False)

    def one(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            conn.settimeout(60)
            while data := conn.recv(4096):
                time.sleep(delay)  # the guest then speaks first: nothing came in since
                conn.sendall(data)

    def accept() -> None:
        while True:
            conn, _ = srv.accept()
            threading.Thread(target=one, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    print("ready", flush=True)
    sys.stdin.read()


def hold(specs: list[str]) -> None:
    host, port = specs[0].split(":")
    s = socket.create_connection((host, int(port)), timeout=TIMEOUT)
    s.settimeout(float(specs[1]) if len(specs) > 1 else TIMEOUT)
    print("connected", flush=True)
    for line in sys.stdin:
        word = line.strip().encode()
        try:
            s.sendall(word)
            got = s.recv(4096)
        except OSError:
            got = b""
        print(f"echo {got.decode()}" if got == word else "none", flush=True)


if __name__ == "__main__":
    {"serve": serve, "probe": probe, "echo": echo, "hold": hold}[sys.argv[1]](sys.argv[2:])
