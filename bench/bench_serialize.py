"""Serializer micro-benchmark: ``edgeproxy.xmpp.serialize.serialize`` on the stanzas the gateway
and the edge write for every SIP→XMPP message, optionally side by side with another version of
the module (a file path, e.g. ``git show REV:src/edgeproxy/xmpp/serialize.py > /tmp/old.py``).

    .venv/bin/python bench/bench_serialize.py [--against /tmp/old.py] [--rounds 7] [--number 20000]

Prints the median µs per stanza of each, measured in alternating rounds in one process.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import timeit
from collections.abc import Callable

from edgeproxy.tokenizer import Element
from edgeproxy.xmpp import serialize as current

NS = "jabber:server"


def chat_message() -> Element:
    """What translate.sip_message_to_xmpp builds for a one-line SIP MESSAGE."""
    body = Element("body", NS, {}, ["Hallo Romeo, kommst du heute Abend? Grüße aus Contoso ☃"])
    return Element(
        "message",
        NS,
        {"from": "alice@contoso.test", "to": "romeo@fabrikam.test", "type": "chat",
         "id": "3f2a9c81d0e4", "{http://www.w3.org/XML/1998/namespace}lang": "de"},
        [body],
    )


def escaped_message() -> Element:
    body = Element("body", NS, {}, ["if a < b && c > d then \"quote\"\r\n"])
    return Element("message", NS, {"to": "r&d@fabrikam.test", "type": "chat"}, [body])


def load(path: str) -> Callable[..., bytes]:
    spec = importlib.util.spec_from_file_location("serialize_other", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.serialize  # type: ignore[no-any-return]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--against", help="path of another serialize.py to compare with")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--number", type=int, default=20_000)
    args = parser.parse_args()
    versions: dict[str, Callable[..., bytes]] = {"current": current.serialize}
    if args.against:
        versions["against"] = load(args.against)
    for label, element in (("plain chat", chat_message()), ("with escapes", escaped_message())):
        outputs = {name: fn(element) for name, fn in versions.items()}
        assert len(set(outputs.values())) == 1, outputs  # same bytes from every version
        times: dict[str, list[float]] = {name: [] for name in versions}
        for _ in range(args.rounds):
            for name, fn in versions.items():
                seconds = timeit.timeit(lambda fn=fn, element=element: fn(element), number=args.number)
                times[name].append(seconds / args.number * 1e6)
        line = ", ".join(f"{name} {statistics.median(t):.2f} µs" for name, t in times.items())
        if args.against:
            ratio = statistics.median(times["against"]) / statistics.median(times["current"])
            line += f" (against/current {ratio:.2f}×)"
        print(f"{label}: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
