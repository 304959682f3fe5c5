"""Tokenizer throughput against the usual Python approaches (issue 2 "Performance target").

On the generated corpus (../shared/corpus/gen_corpus.py, cached outside git in bench/out/), each
file pre-cut into 4 KiB chunks (cutting is not timed), every parser is fed every chunk and must
emit exactly MANIFEST.json's number of top-level elements (checked on every run):

  ours-routing   edgeproxy Tokenizer; touches name, to, from_, type, id of every Stanza
  ours-tree      the same plus Stanza.element() (a full element tree per stanza)
  pyexpat-split  pyexpat without namespaces, start/end handlers only, raw bytes of each stanza
                 cut out via CurrentByteIndex (the cheapest Python stanza splitter)
  pyexpat-tree   pyexpat with namespace processing, builds a small tree per stanza
  etree-pull     xml.etree.ElementTree.XMLPullParser, stanza detached at depth 1
  lxml-pull      lxml.etree.XMLPullParser, same handling (skipped if lxml is missing)
  ours-raw       (diagnostic, only with --only/--once) Tokenizer, stanzas counted, no attribute
                 touched: separates the scanner from the routing-view strings

Timing: time.perf_counter around the whole feed loop, gc.collect() before each run, median of
--runs runs; the parsers take turns within each run, so slow drifts in machine load hit them
alike. MB = 10**6 bytes. Ratios are to pyexpat-split (and ours-tree to pyexpat-tree).

usage:
  python bench/bench_tokenizer.py [--scale 1.0] [--runs 5] [--cpu N] [--json out.json]
  python bench/bench_tokenizer.py --once PARSER FILE   # one untimed pass (for callgrind)
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
import xml.parsers.expat as expat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgeproxy.tokenizer import DEFAULT_MAX_STANZA_BYTES, Stanza, Tokenizer

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
FILES = ["mixed.xml", "small-presence.xml", "large-messages.xml"]
CHUNK = 4096
NS_STREAMS = "http://etherx.jabber.org/streams"

Parser = Callable[[list[bytes]], int]


def generator_path() -> Path:
    env = os.environ.get("EDGEPROXY_CORPUS_DIR")
    base = Path(env) if env else REPO.parent / "shared" / "corpus"
    return base / "gen_corpus.py"


def ensure_corpus(scale: float, out: Path | None = None) -> tuple[Path, dict[str, Any]]:
    """Generate the corpus once per scale into bench/out/ (ignored by git) and reuse it."""
    folder = out or HERE / "out" / f"corpus-{scale:g}"
    manifest_path = folder / "MANIFEST.json"
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        if all(f in manifest and manifest[f].get("scale") == scale for f in FILES):
            return folder, manifest
    folder.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(generator_path()), "--scale", str(scale), "--out", str(folder)]
    print("generating corpus:", " ".join(cmd), file=sys.stderr)
    subprocess.run(cmd, check=True, stdout=sys.stderr)
    return folder, json.loads(manifest_path.read_text())


# --- parsers: each takes the list of chunks and returns the number of top-level elements ------


def make_ours_routing(max_stanza_bytes: int) -> Parser:
    def ours_routing(chunks: list[bytes]) -> int:
        tok = Tokenizer(max_stanza_bytes=max_stanza_bytes)
        feed = tok.feed
        n = 0
        for chunk in chunks:
            for token in feed(chunk):
                if type(token) is Stanza:
                    # the routing view: what the router reads for every stanza
                    token.name, token.to, token.from_, token.type, token.id  # noqa: B018
                    n += 1
        return n

    return ours_routing


def make_ours_raw(max_stanza_bytes: int) -> Parser:
    """Diagnostic (not in the default set): stanzas counted, nothing looked at."""

    def ours_raw(chunks: list[bytes]) -> int:
        tok = Tokenizer(max_stanza_bytes=max_stanza_bytes)
        feed = tok.feed
        n = 0
        for chunk in chunks:
            for token in feed(chunk):
                if type(token) is Stanza:
                    n += 1
        return n

    return ours_raw


def make_ours_tree(max_stanza_bytes: int) -> Parser:
    def ours_tree(chunks: list[bytes]) -> int:
        tok = Tokenizer(max_stanza_bytes=max_stanza_bytes)
        feed = tok.feed
        n = 0
        for chunk in chunks:
            for token in feed(chunk):
                if type(token) is Stanza:
                    token.element()
                    n += 1
        return n

    return ours_tree


def pyexpat_split(chunks: list[bytes], collect: list[bytes] | None = None) -> int:
    """Start/end handlers only, no namespaces; the raw bytes of each stanza are cut from a
    buffer of the received bytes at the byte offsets expat reports (``collect`` gets them, for
    --verify)."""
    parser = expat.ParserCreate()
    buf = bytearray()
    base = 0  # stream offset of buf[0]
    depth = 0
    start = -1  # stream offset where the current stanza starts
    last_was_start = False
    out: list[bytes] = []

    def on_start(name: str, attrs: dict[str, str]) -> None:
        nonlocal depth, start, last_was_start
        depth += 1
        last_was_start = True
        if depth == 2:
            start = parser.CurrentByteIndex

    def on_end(name: str) -> None:
        nonlocal depth, start, last_was_start
        depth -= 1
        if depth == 1:
            i = parser.CurrentByteIndex - base
            # an empty-element tag's end is reported just past its '/>', an end tag's at '</'
            end = i if last_was_start and buf[i - 2 : i] == b"/>" else buf.index(b">", i) + 1
            out.append(bytes(buf[start - base : end]))
            start = -1
        last_was_start = False

    parser.StartElementHandler = on_start
    parser.EndElementHandler = on_end
    parse = parser.Parse
    n = 0
    for chunk in chunks:
        buf += chunk
        parse(chunk, False)
        if out:
            n += len(out)
            if collect is not None:
                collect.extend(out)
            out.clear()
        keep = (start if start >= 0 else parser.CurrentByteIndex) - base
        if keep > 65536:
            del buf[:keep]
            base += keep
    return n


class _Node:
    __slots__ = ("tag", "attrs", "children")

    def __init__(self, tag: str, attrs: dict[str, str]) -> None:
        self.tag = tag
        self.attrs = attrs
        self.children: list[Any] = []


def pyexpat_tree(chunks: list[bytes]) -> int:
    """Namespace processing on, buffered text, a small tree per stanza (the classic approach of
    Python XMPP servers and clients)."""
    parser = expat.ParserCreate(None, " ")
    parser.buffer_text = True
    stack: list[_Node] = []
    depth = 0
    n = 0

    def on_start(name: str, attrs: dict[str, str]) -> None:
        nonlocal depth
        depth += 1
        if depth >= 2:
            node = _Node(name, attrs)
            if stack:
                stack[-1].children.append(node)
            stack.append(node)

    def on_end(name: str) -> None:
        nonlocal depth, n
        depth -= 1
        if depth >= 1:
            stack.pop()
            if depth == 1:
                n += 1

    def on_text(data: str) -> None:
        if stack:
            stack[-1].children.append(data)

    parser.StartElementHandler = on_start
    parser.EndElementHandler = on_end
    parser.CharacterDataHandler = on_text
    parse = parser.Parse
    for chunk in chunks:
        parse(chunk, False)
    return n


def _pull(pull_parser: Any, chunks: list[bytes]) -> int:
    feed = pull_parser.feed
    events = pull_parser.read_events
    depth = 0
    root = None
    n = 0
    for chunk in chunks:
        feed(chunk)
        for event, el in events():
            if event == "start":
                depth += 1
                if depth == 1:
                    root = el
            else:
                depth -= 1
                if depth == 1:
                    n += 1
                    root.remove(el)  # type: ignore[union-attr]
    return n


def etree_pull(chunks: list[bytes]) -> int:
    return _pull(ET.XMLPullParser(events=("start", "end")), chunks)


def lxml_pull(chunks: list[bytes]) -> int:
    from lxml import etree

    return _pull(etree.XMLPullParser(events=("start", "end"), huge_tree=True), chunks)


DIAGNOSTIC = {"ours-raw": make_ours_raw}


def parsers(max_stanza_bytes: int, diagnostic: bool = False) -> dict[str, Parser]:
    table: dict[str, Parser] = {
        "ours-routing": make_ours_routing(max_stanza_bytes),
        "ours-tree": make_ours_tree(max_stanza_bytes),
        "pyexpat-split": pyexpat_split,
        "pyexpat-tree": pyexpat_tree,
        "etree-pull": etree_pull,
    }
    try:
        import lxml.etree  # noqa: F401

        table["lxml-pull"] = lxml_pull
    except ImportError:
        print("lxml missing: lxml-pull skipped", file=sys.stderr)
    if diagnostic:
        table.update({name: make(max_stanza_bytes) for name, make in DIAGNOSTIC.items()})
    return table


# --- measuring ----------------------------------------------------------------------------------


def cut(data: bytes) -> list[bytes]:
    return [data[i : i + CHUNK] for i in range(0, len(data), CHUNK)]


def env_info() -> dict[str, str]:
    info = {
        "python": sys.version.split()[0],
        "expat": expat.EXPAT_VERSION,
        "machine": platform.machine(),
        "cpus": str(os.cpu_count()),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        from lxml import etree

        info["lxml"] = ".".join(map(str, etree.LXML_VERSION[:3]))
        info["libxml2"] = ".".join(map(str, etree.LIBXML_VERSION))
    except ImportError:
        pass
    with contextlib.suppress(OSError):
        info["load_average"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return info


def measure(
    folder: Path, manifest: dict[str, Any], names: list[str], files: list[str], runs: int
) -> list[dict[str, Any]]:
    results = []
    for fname in files:
        data = (folder / fname).read_bytes()
        chunks = cut(data)
        expected = manifest[fname]["top_level_elements"]
        limit = max(DEFAULT_MAX_STANZA_BYTES, manifest[fname]["largest_top_level_element_bytes"])
        table = parsers(limit, diagnostic=True)
        times: dict[str, list[float]] = {p: [] for p in names}
        for _ in range(runs):
            for pname in names:
                gc.collect()
                t0 = time.perf_counter()
                count = table[pname](chunks)
                elapsed = time.perf_counter() - t0
                if count != expected:
                    raise SystemExit(
                        f"{pname} on {fname}: {count} stanzas, MANIFEST says {expected}"
                    )
                times[pname].append(elapsed)
        for pname in names:
            median = statistics.median(times[pname])
            results.append(
                {
                    "file": fname,
                    "parser": pname,
                    "bytes": len(data),
                    "stanzas": expected,
                    "median_s": median,
                    "runs_s": times[pname],
                    "MB_per_s": len(data) / median / 1e6,
                    "stanzas_per_s": expected / median,
                }
            )
        print(f"measured {fname}", file=sys.stderr)
    return results


def verify(folder: Path) -> None:
    """The baseline splitter must do the same job as ours: identical raw bytes per stanza."""
    for fname in FILES:
        chunks = cut((folder / fname).read_bytes())
        theirs: list[bytes] = []
        pyexpat_split(chunks, theirs)
        tok = Tokenizer(max_stanza_bytes=1 << 24)
        ours = [t.raw for c in chunks for t in tok.feed(c) if type(t) is Stanza]
        if ours != theirs:
            raise SystemExit(f"verify: pyexpat-split and ours cut {fname} differently")
        print(f"verify: {fname}: {len(ours)} identical raw stanzas", file=sys.stderr)


def markdown_table(results: list[dict[str, Any]]) -> str:
    by = {(r["file"], r["parser"]): r for r in results}
    lines = [
        "| file | parser | MB/s | stanzas/s | × pyexpat-split | × pyexpat-tree |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in results:
        split = by.get((r["file"], "pyexpat-split"))
        tree = by.get((r["file"], "pyexpat-tree"))
        vs_split = f"{split['median_s'] / r['median_s']:.1f}" if split else ""
        vs_tree = (
            f"{tree['median_s'] / r['median_s']:.1f}" if tree and "tree" in r["parser"] else ""
        )
        lines.append(
            f"| {r['file']} | {r['parser']} | {r['MB_per_s']:.1f} | {r['stanzas_per_s']:,.0f} |"
            f" {vs_split} | {vs_tree} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--scale", type=float, default=1.0, help="corpus scale (gen_corpus.py --scale)")
    ap.add_argument("--corpus", type=Path, help="corpus folder (default bench/out/corpus-SCALE)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--cpu", type=int, help="pin this process to one CPU (os.sched_setaffinity)")
    ap.add_argument("--json", type=Path, help="write results and environment as JSON")
    ap.add_argument("--only", help="comma-separated parser names")
    ap.add_argument("--files", help="comma-separated file names (default: all three)")
    ap.add_argument(
        "--verify",
        action="store_true",
        help="check once that pyexpat-split cuts the same raw bytes as our tokenizer",
    )
    ap.add_argument(
        "--once",
        nargs=2,
        metavar=("PARSER", "FILE"),
        help="one untimed pass of PARSER over FILE (PARSER 'none': load and cut only)",
    )
    args = ap.parse_args(argv)

    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})

    if args.once:
        pname, path = args.once
        data = Path(path).read_bytes()
        chunks = cut(data)
        # build the table (imports lxml) in both cases so that 'none' has the same start-up
        available = parsers(max(DEFAULT_MAX_STANZA_BYTES, len(data)), diagnostic=True)
        if pname != "none":
            count = available[pname](chunks)
            print(f"{pname}: {count} stanzas, {len(data)} bytes", file=sys.stderr)
        return 0

    folder, manifest = ensure_corpus(args.scale, args.corpus)
    if args.verify:
        verify(folder)
    names = list(parsers(DEFAULT_MAX_STANZA_BYTES))
    if args.only:
        names = [n for n in args.only.split(",") if n]
    files = args.files.split(",") if args.files else FILES
    env = env_info()
    results = measure(folder, manifest, names, files, args.runs)
    print(
        f"corpus {folder} (scale {args.scale:g}), {CHUNK}-byte chunks, median of {args.runs} runs"
    )
    print("environment: " + ", ".join(f"{k} {v}" for k, v in env.items()))
    print(markdown_table(results))
    if args.json:
        args.json.write_text(
            json.dumps(
                {"env": env, "scale": args.scale, "runs": args.runs, "results": results}, indent=1
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
