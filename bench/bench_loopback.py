"""Loopback channel frames: encode + decode throughput in stanzas per second.

Builds batches of realistic chat stanzas (``Routed`` items with routing view and raw bytes, as the
edge forwards them), then times ``encode_frame`` + ``decode_frame`` (the strict decoder, with its
limits and sequence check) over many batches. Target (issue 5): >= 1,000,000 stanzas/s.

    .venv/bin/python bench/bench_loopback.py [--batch 256] [--seconds 3]
"""

from __future__ import annotations

import argparse
import time

from edgeproxy.loopback.frames import Routed, StanzaBatch, StanzaKind, decode_frame, encode_frame


def make_batch(first_seq: int, size: int) -> StanzaBatch:
    items = []
    for i in range(size):
        seq = first_seq + i
        raw = (
            f"<message from='romeo@montague.example/orchard' to='juliet@contoso.test' "
            f"type='chat' id='m{seq}' xmlns='jabber:server'><body>Art thou not Romeo, "
            f"and a Montague? #{seq}</body></message>"
        ).encode()
        items.append(
            Routed(
                seq,
                StanzaKind.MESSAGE,
                "romeo@montague.example/orchard",
                "juliet@contoso.test",
                "chat",
                f"m{seq}",
                raw,
            )
        )
    return StanzaBatch(items=tuple(items))


def run(batch_size: int, seconds: float) -> float:
    batches = [make_batch(1 + k * batch_size, batch_size) for k in range(64)]
    done = 0
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        for batch in batches:
            frame = decode_frame(encode_frame(batch))
            assert isinstance(frame, StanzaBatch)
            done += len(frame.items)
    return done / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    rate = run(args.batch, args.seconds)
    print(f"batch={args.batch}: {rate:,.0f} stanzas/s encode+decode")


if __name__ == "__main__":
    main()
