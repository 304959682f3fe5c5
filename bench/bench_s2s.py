"""S2S relay benchmark: scripted partner streams push messages through a real edge's inbound S2S
path (tokenizer → stream checks → policy engine → local delivery), plain and over TLS.

What runs where
---------------
* The **edge under test** (``contoso.test``) is a subprocess of this script (``--edge-child``):
  an :class:`~edgeproxy.net.edge.EdgeServer` on 127.0.0.1 port 0 whose local delivery is the
  in-memory :class:`~edgeproxy.net.delivery.MemoryDelivery`, drained by a task that counts the
  stanzas and prints a line each time a round's worth arrived. Its CPU time is read from
  ``/proc/<pid>/stat`` (utime + stime), so the partners' CPU is not counted.
* The **partner side** (``fabrikam.test``) runs here: a real edge as its authoritative server
  (it answers the ``db:verify`` the edge sends to check the dialback keys, XEP-0220 §2.2) and
  ``--streams`` scripted initiating streams (``tests/net/_scripted_peer.py``: the library's
  sans-IO core over a socket) that authenticate by TCP dialback (matrix row 17, ``plain``) or
  STARTTLS + dialback (row 13, ``tls``), then write ``--batch`` stanzas per ``send_all``.

Figures per mode: stanzas/s (wall clock from the first byte of a round until the edge reports
the round delivered; median of ``--rounds``) and the edge's CPU seconds per 1,000 stanzas.

    .venv/bin/python bench/bench_s2s.py [--messages 40000] [--streams 4] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "net"))  # the scripted peer and the edge fixture
sys.path.insert(0, str(ROOT / "tests"))  # what they build on (tests/fixtures)

from _edges import partner, set_partners, start_edge  # noqa: E402
from _scripted_peer import open_scripted_stream  # noqa: E402

from edgeproxy.certs import selfsigned  # noqa: E402
from edgeproxy.certs.contexts import TlsRole, tls_context  # noqa: E402
from edgeproxy.certs.pem import certificates_pem, private_key_pem  # noqa: E402
from edgeproxy.policy.model import Negotiation  # noqa: E402

USERS = ("alice",)


def row(mode: str) -> dict[str, object]:
    return {"tls": Negotiation.REQUIRED} if mode == "tls" else {}


def write_certs(directory: Path) -> None:
    ca = selfsigned.make_authority("Bench CA")
    (directory / "ca.pem").write_bytes(certificates_pem([ca.certificate]))
    for domain in ("contoso.test", "fabrikam.test"):
        key = selfsigned.new_ec_key()
        (directory / f"{domain}.pem").write_bytes(certificates_pem([selfsigned.issue(ca, key.public_key(), [domain])]))
        (directory / f"{domain}.key").write_bytes(private_key_pem(key))


def contexts(directory: Path, domain: str):  # type: ignore[no-untyped-def]
    args = (directory / f"{domain}.pem", directory / f"{domain}.key", directory / "ca.pem")
    return tls_context(TlsRole.S2S_SERVER, *args), tls_context(TlsRole.S2S_CLIENT, *args)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- the edge under test (subprocess) --------------------------------------------------------


async def edge_child(mode: str, certs: Path, authoritative_port: int, round_size: int) -> None:
    async with trio.open_nursery() as nursery:
        ssl = contexts(certs, "contoso.test") if mode == "tls" else (None, None)
        contoso = await start_edge(nursery, "contoso.test", USERS, "c", *ssl)
        set_partners(contoso, USERS, "c", partner("fabrikam.test", authoritative_port, **row(mode)))  # type: ignore[arg-type]
        print(f"port {contoso.port}", flush=True)
        count = 0
        while True:
            await contoso.delivery.receive()
            count += 1
            if count % round_size == 0:
                print(f"delivered {count}", flush=True)


# -- the partner side (this process) ---------------------------------------------------------


def stanzas(stream_no: int, count: int, batch: int) -> list[bytes]:
    out = []
    for start in range(0, count, batch):
        out.append(b"".join(
            f"<message from='bob{stream_no}@fabrikam.test/r' to='alice@contoso.test' type='chat'"
            f" id='m{stream_no}-{n}'><body>hello {n}, a short message of ordinary size</body></message>".encode()
            for n in range(start, min(start + batch, count))
        ))
    return out


async def run_mode(mode: str, messages: int, streams: int, rounds: int, batch: int, certs: Path) -> dict[str, float]:
    per_stream = messages // streams
    messages = per_stream * streams
    async with trio.open_nursery() as nursery:
        f_ssl = contexts(certs, "fabrikam.test") if mode == "tls" else (None, None)
        fabrikam = await start_edge(nursery, "fabrikam.test", ("bob",), "f", *f_ssl)
        child = await nursery.start(
            lambda task_status: trio.run_process(
                [sys.executable, __file__, "--edge-child", mode, str(certs), str(fabrikam.port), str(messages)],
                stdout=-1, task_status=task_status, check=False,
            )
        )
        lines = LineReader(child.stdout)
        port = int((await lines.next()).split()[1])
        set_partners(fabrikam, ("bob",), "f", partner("contoso.test", port, **row(mode)))  # type: ignore[arg-type]
        peers = [
            await open_scripted_stream("127.0.0.1", port, local="fabrikam.test", remote="contoso.test",
                                       policy=fabrikam.holder[0], secret="f")
            for _ in range(streams)
        ]
        assert all(p.conn.tls_active is (mode == "tls") for p in peers)
        payloads = [stanzas(i, per_stream, batch) for i in range(streams)]
        rates, cpus = [], []
        for _ in range(rounds):
            cpu0, t0 = cpu_seconds(child.pid), time.perf_counter()
            async with trio.open_nursery() as pushers:
                for peer, chunks in zip(peers, payloads, strict=True):
                    pushers.start_soon(push, peer, chunks)
            line = await lines.next()
            t1, cpu1 = time.perf_counter(), cpu_seconds(child.pid)
            assert line.startswith("delivered"), line
            rates.append(messages / (t1 - t0))
            cpus.append((cpu1 - cpu0) / messages * 1000)
        child.kill()
        nursery.cancel_scope.cancel()
    return {"rate": statistics.median(rates), "cpu_per_1000": statistics.median(cpus),
            "rate_min": min(rates), "rate_max": max(rates), "messages": messages}


async def push(peer, chunks: list[bytes]) -> None:  # type: ignore[no-untyped-def]
    for chunk in chunks:
        await peer.send_raw(chunk)


class LineReader:
    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self.stream, self.buffer = stream, b""

    async def next(self) -> str:
        while b"\n" not in self.buffer:
            data = await self.stream.receive_some(4096)
            if not data:
                raise RuntimeError("the edge process ended")
            self.buffer += data
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode()


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        certs = Path(tmp)
        write_certs(certs)
        print(f"S2S relay: {args.messages} messages per round over {args.streams} streams, "
              f"{args.batch} stanzas per write, median of {args.rounds} rounds; edge CPU from /proc")
        for mode in args.modes:
            with trio.fail_after(600):
                r = await run_mode(mode, args.messages, args.streams, args.rounds, args.batch, certs)
            print(f"  {mode:5}  {r['rate']:10,.0f} stanzas/s  (min {r['rate_min']:,.0f}, max {r['rate_max']:,.0f})"
                  f"   edge CPU {r['cpu_per_1000']:.4f} s per 1,000 stanzas")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--edge-child":
        _, _, mode, certs, auth_port, expect = sys.argv
        trio.run(edge_child, mode, Path(certs), int(auth_port), int(expect))
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=40_000, help="stanzas per round (all streams)")
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=50, help="stanzas per write")
    parser.add_argument("--modes", nargs="+", default=["plain", "tls"], choices=["plain", "tls"])
    trio.run(main, parser.parse_args())
