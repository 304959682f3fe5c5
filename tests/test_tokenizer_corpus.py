"""The tokenizer on the generated benchmark corpus (gen_corpus.py --scale 0.05, ~4.5 MB): exactly
MANIFEST.json's number of top-level elements per file, one StreamOpen first, one StreamClose
last, raw bytes that tile the stream. Generated into a temporary folder, never into git."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from _tokenizer_harness import chunked, corpus_dir, feed_all, require_corpus, split_at
from edgeproxy.tokenizer import Stanza, StreamClose, StreamOpen

GENERATOR = corpus_dir() / "gen_corpus.py"
FILES = ["mixed.xml", "small-presence.xml", "large-messages.xml"]
SCALE = "0.05"


@pytest.fixture(scope="session")
def generated_corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    require_corpus(GENERATOR)
    out = tmp_path_factory.mktemp("corpus")
    subprocess.run(
        [sys.executable, str(GENERATOR), "--scale", SCALE, "--out", str(out)],
        check=True,
        capture_output=True,
    )
    manifest = json.loads((out / "MANIFEST.json").read_text())
    return out, manifest


def _check_tiling(data: bytes, tokens: list[Any]) -> None:
    """Header, stanzas and close follow each other in the stream with only whitespace between."""
    assert isinstance(tokens[0], StreamOpen)
    pos = data.index(tokens[0].raw) + len(tokens[0].raw)
    assert data[: data.index(tokens[0].raw)].startswith(b"<?xml")
    for token in tokens[1:]:
        while data[pos] in b" \t\r\n":
            pos += 1
        assert data.startswith(token.raw, pos), f"token does not start at byte {pos}"
        pos += len(token.raw)
    assert pos == len(data)


@pytest.mark.parametrize("name", FILES)
def test_generated_corpus_yields_manifest_stanza_count_in_4k_chunks(
    generated_corpus: tuple[Path, dict[str, Any]], name: str
) -> None:
    folder, manifest = generated_corpus
    data = (folder / name).read_bytes()
    run = feed_all(chunked(data, 4096))
    assert run.error is None, f"{run.error.condition} at {run.error.offset}: {run.error}"
    assert len(run.stanzas) == manifest[name]["top_level_elements"]
    assert isinstance(run.tokens[0], StreamOpen)
    assert isinstance(run.tokens[-1], StreamClose)
    assert sum(isinstance(t, StreamOpen) for t in run.tokens) == 1
    assert sum(isinstance(t, StreamClose) for t in run.tokens) == 1
    assert run.tokenizer.closed
    assert run.tokenizer.bytes_fed == len(data)
    assert max(len(s.raw) for s in run.stanzas) == manifest[name]["largest_top_level_element_bytes"]
    _check_tiling(data, run.tokens)
    header_and_decl = data.index(run.tokens[0].raw) + len(run.tokens[0].raw)
    stanza_bytes = sum(len(s.raw) for s in run.stanzas)
    closing = len(run.tokens[-1].raw)
    assert run.tokenizer.whitespace_bytes == len(data) - header_and_decl - stanza_bytes - closing


@pytest.mark.parametrize("name", FILES)
def test_generated_corpus_gives_identical_stanzas_for_random_chunkings(
    generated_corpus: tuple[Path, dict[str, Any]], name: str
) -> None:
    folder, _ = generated_corpus
    data = (folder / name).read_bytes()
    reference = [(type(t), t.raw) for t in feed_all([data]).tokens]
    rnd = random.Random(f"{name}-chunkings")
    for _ in range(3):
        cuts = [rnd.randrange(len(data)) for _ in range(rnd.choice([10, 1000, 20000]))]
        run = feed_all(split_at(data, cuts))
        assert run.error is None
        assert [(type(t), t.raw) for t in run.tokens] == reference


def test_generated_corpus_stanzas_parse_into_trees_with_their_routing_view(
    generated_corpus: tuple[Path, dict[str, Any]],
) -> None:
    folder, _ = generated_corpus
    run = feed_all(chunked((folder / "mixed.xml").read_bytes(), 4096))
    namespaces = set()
    for st in run.stanzas:
        assert isinstance(st, Stanza)
        el = st.element()
        assert (el.name, el.namespace) == (st.name, st.namespace)
        assert (el.get("to"), el.get("from"), el.get("type"), el.get("id")) == (
            st.to,
            st.from_,
            st.type,
            st.id,
        )
        namespaces.add(st.namespace)
    assert {"jabber:server", "jabber:server:dialback"} <= namespaces
