"""Shared helpers for the tokenizer tests: locating the shared corpus, feeding chunks, and
turning tokens and element trees into plain comparable values."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeproxy.tokenizer import (
    Element,
    Stanza,
    StreamClose,
    StreamOpen,
    Token,
    Tokenizer,
    TokenizerError,
)
from fixtures.tools import unavailable

REPO_ROOT = Path(__file__).resolve().parents[1]


# Where the team's shared corpus lives when the checkout is not next to it (CI clones elsewhere).
WORKPLACE_CORPUS = Path("/work/shared/corpus")


def corpus_dir() -> Path:
    """The shared corpus: ``$EDGEPROXY_CORPUS_DIR``, else ``../shared/corpus`` next to the repo,
    else the workplace's ``/work/shared/corpus``."""
    env = os.environ.get("EDGEPROXY_CORPUS_DIR")
    if env:
        return Path(env)
    beside = REPO_ROOT.parent / "shared" / "corpus"
    if beside.exists() or not WORKPLACE_CORPUS.exists():
        return beside
    return WORKPLACE_CORPUS


def require_corpus(path: Path) -> None:
    """Fail under CI (the corpus is part of the acceptance), skip on a developer machine."""
    if path.exists():
        return
    unavailable(f"shared corpus not found at {path} (set EDGEPROXY_CORPUS_DIR)")


def chunked(data: bytes, size: int) -> Iterator[bytes]:
    """``data`` cut into ``size``-byte pieces, lazily (a 1 MB file in 1-byte chunks is never
    materialised as a list)."""
    if not data:
        yield b""
        return
    for i in range(0, len(data), size):
        yield data[i : i + size]


def split_at(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    """``data`` cut at the given offsets (unsorted and duplicates allowed)."""
    points = sorted({min(max(c, 0), len(data)) for c in cuts})
    pieces = []
    last = 0
    for p in points:
        pieces.append(data[last:p])
        last = p
    pieces.append(data[last:])
    return pieces


@dataclass
class Run:
    """What a tokenizer did with one input: the tokens it returned and the error it raised."""

    tokenizer: Tokenizer
    tokens: list[Token] = field(default_factory=list)
    error: TokenizerError | None = None
    #: bytes fed up to and including the chunk whose feed() raised (or all bytes fed)
    fed: int = 0

    @property
    def stanzas(self) -> list[Stanza]:
        return [t for t in self.tokens if isinstance(t, Stanza)]

    @property
    def opens(self) -> list[StreamOpen]:
        return [t for t in self.tokens if isinstance(t, StreamOpen)]

    @property
    def closes(self) -> list[StreamClose]:
        return [t for t in self.tokens if isinstance(t, StreamClose)]


def feed_all(chunks: Iterable[bytes], tokenizer: Tokenizer | None = None, **limits: int) -> Run:
    """Feed every chunk until the tokenizer raises; never lets any other exception pass."""
    tok = tokenizer if tokenizer is not None else Tokenizer(**limits)
    run = Run(tok)
    try:
        for chunk in chunks:
            run.fed += len(chunk)
            run.tokens.extend(tok.feed(chunk))
    except TokenizerError as exc:
        # tokens completed by the failing feed() call before the error ride on the exception
        run.tokens.extend(getattr(exc, "tokens", ()))
        run.error = exc
    return run


def element_shape(el: Element | str) -> Any:
    """An Element tree as nested tuples/dicts (str text nodes kept, adjacent ones merged)."""
    if isinstance(el, str):
        return el
    children: list[Any] = []
    for child in el.children:
        if isinstance(child, str):
            if not child:
                continue
            if children and isinstance(children[-1], str):
                children[-1] += child
                continue
            children.append(child)
        else:
            children.append(element_shape(child))
    return (el.name, el.namespace, dict(el.attrs), children)


def token_signature(token: Token, *, with_tree: bool = True) -> tuple[Any, ...]:
    """Everything observable about a token, as a plain value."""
    if isinstance(token, StreamOpen):
        return (
            "open",
            token.raw,
            token.qname,
            token.name,
            token.namespace,
            dict(token.attrs),
            dict(token.namespaces),
        )
    if isinstance(token, Stanza):
        routing = (token.name, token.namespace, token.to, token.from_, token.type, token.id)
        tree = element_shape(token.element()) if with_tree else None
        return ("stanza", token.raw, routing, tree)
    if isinstance(token, StreamClose):
        return ("close", token.raw)
    raise AssertionError(f"feed() returned a non-token {token!r}")


def run_signature(run: Run, *, with_tree: bool = True) -> tuple[Any, ...]:
    err = None if run.error is None else (run.error.condition, run.error.offset)
    return (tuple(token_signature(t, with_tree=with_tree) for t in run.tokens), err)


def text_of(el: Element) -> str:
    """Concatenated direct text children (what notes in expected.json call "the body")."""
    return "".join(c for c in el.children if isinstance(c, str))
