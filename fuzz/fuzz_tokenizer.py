"""Fuzz harness (a): ``edgeproxy.tokenizer`` (the compiled ``_fastxml``) in random chunkings.

Input layout: ``flags`` byte, ``seed`` byte, then the stream bytes. ``flags & 1`` selects small
limits (so the fuzzer reaches every ``policy-violation`` limit at every chunk boundary),
``flags & 2`` prepends a valid S2S stream header (the fuzzer then spends its time on stanzas),
``seed`` drives the chunking.

Invariants (tokenizer.py / _fastxml.pyi):

* ``feed()`` raises only :class:`TokenizerError`, whose ``condition`` is one of the RFC 6120
  §4.9.3 conditions the tokenizer documents and whose ``offset`` lies within the bytes fed;
  after an error every later ``feed()`` raises the same error;
* the tokens, the error (condition and offset), ``halted``/``trailing_bytes`` and
  ``whitespace_bytes`` are the same whether the bytes arrive whole, in random chunks or (for
  short inputs) byte by byte;
* every token is usable: ``Stanza.element()`` and the routing properties never raise;
* after a restart point (``halted``) ``reset()`` gives a fresh tokenizer that handles the
  trailing bytes as a new stream under the same rules.
"""

from __future__ import annotations

from _harness import Finding, Known, harness, random_cuts, split_at

from edgeproxy.tokenizer import (
    Element,
    Stanza,
    StreamClose,
    StreamOpen,
    Tokenizer,
    TokenizerError,
)

MAX_LEN = 4096
#: The conditions tokenizer.py documents (RFC 6120 §4.9.3) — what tests/test_tokenizer_* accept.
CONDITIONS = frozenset(
    {
        "not-well-formed",
        "restricted-xml",
        "invalid-namespace",
        "bad-format",
        "unsupported-encoding",
        "policy-violation",
        "bad-namespace-prefix",
    }
)
HEADER = (
    b"<?xml version='1.0'?><stream:stream xmlns='jabber:server' "
    b"xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' "
    b"from='fabrikam.test' to='contoso.test' version='1.0'>"
)
SMALL_LIMITS = {"max_stanza_bytes": 160, "max_depth": 3, "max_attributes": 8, "max_name_bytes": 16}

EXPECTED: tuple[type[BaseException], ...] = ()  # TokenizerError is caught inside, checked
# Fixed (2a32b6c): a whole stream header over max_stanza_bytes was accepted
# (_header_within_limit, test_tokenizer_stream_header_over_max_stanza_bytes_is_refused_...).
KNOWN: tuple[Known, ...] = (
    # A stanza (or name) past its limit with another error after the crossing: fed whole, the
    # later error wins; in chunks ending past the limit, policy-violation at the crossing.
    Known(
        Finding,
        "fuzz/fuzz_tokenizer.py",
        "_limit_crossed_first",
        "test_tokenizer_limit_crossed_before_a_later_error_wins_in_any_chunking",
    ),
    # A broken XML declaration longer than a max_stanza_bytes below 256: not-well-formed at 0
    # fed whole, policy-violation at the limit when a feed() ends inside it past the limit.
    Known(
        Finding,
        "fuzz/fuzz_tokenizer.py",
        "_declaration_before_limit",
        "test_tokenizer_broken_xml_declaration_gives_one_verdict_under_a_small_limit",
    ),
    # An end-tag name longer than max_name_bytes that does not match the open element:
    # not-well-formed at the end tag fed whole, policy-violation at the crossing in chunks.
    Known(
        Finding,
        "fuzz/fuzz_tokenizer.py",
        "_earlier_error_lost_to_a_limit",
        "test_tokenizer_overlong_mismatched_end_tag_gives_one_verdict",
    ),
    # An entity reference followed by non-UTF-8 bytes: not-well-formed whole, restricted-xml in
    # small chunks, at the same offset.
    Known(
        Finding,
        "fuzz/fuzz_tokenizer.py",
        "_reference_verdict",
        "test_tokenizer_reference_followed_by_invalid_utf8_gives_one_verdict",
    ),
)


def _shape(el: Element | str) -> object:
    if isinstance(el, str):
        return el
    return (el.name, el.namespace, dict(el.attrs), [_shape(c) for c in el.children if c != ""])


def _token(token: object) -> tuple[object, ...]:
    if isinstance(token, StreamOpen):
        return (
            "open",
            token.raw,
            token.qname,
            token.name,
            token.namespace,
            dict(token.attrs),
            dict(token.namespaces),
            token.to,
            token.from_,
            token.id,
            token.version,
            token.lang,
            token.default_namespace,
        )
    if isinstance(token, Stanza):
        routing = (token.name, token.namespace, token.to, token.from_, token.type, token.id)
        el = token.element()
        if el.name != token.name or el.namespace != token.namespace:
            raise Finding(f"element() {el.tag} differs from the routing view {routing}")
        _ = (el.text, el.elements(), el.tag)
        return ("stanza", token.raw, routing, _shape(el))
    if isinstance(token, StreamClose):
        return ("close", token.raw)
    raise Finding(f"feed() returned a non-token {token!r}")


def run(chunks: list[bytes], limits: dict[str, int]) -> tuple[object, ...]:
    tok = Tokenizer(**limits)
    tokens: list[object] = []
    error: tuple[str, int] | None = None
    fed = 0
    for chunk in chunks:
        fed += len(chunk)
        try:
            tokens.extend(tok.feed(chunk))
        except TokenizerError as exc:
            tokens.extend(exc.tokens or ())
            if exc.condition not in CONDITIONS:
                raise Finding(f"undocumented condition {exc.condition!r}: {exc}") from exc
            if not 0 <= exc.offset <= tok.bytes_fed:
                raise Finding(f"offset {exc.offset} outside 0..{tok.bytes_fed}") from exc
            error = (exc.condition, exc.offset)
            try:
                tok.feed(b"<")
            except TokenizerError as again:
                if (again.condition, again.offset) != error:
                    raise Finding(f"a dead tokenizer raised another error: {again}") from again
            else:
                raise Finding("feed() after an error did not raise") from exc
            break
    signature = tuple(_token(t) for t in tokens)
    halted = tok.halted
    trailing = tok.trailing_bytes if halted else b""
    after: tuple[object, ...] = ()
    if halted and error is None:
        tok.reset()
        if tok.halted or tok.stream_open is not None:
            raise Finding("reset() left state behind")
        try:
            after = tuple(_token(t) for t in tok.feed(trailing + HEADER))
        except TokenizerError as exc:
            if exc.condition not in CONDITIONS:
                raise Finding(f"undocumented condition {exc.condition!r}: {exc}") from exc
            after = (exc.condition, exc.offset)
    ws = tok.whitespace_bytes if error is None and not halted else None
    return signature, error, halted, trailing, ws, after


def _declaration_before_limit(payload: bytes, results: list[tuple[object, ...]], limit: int) -> None:
    """An unterminated, malformed XML declaration longer than max_stanza_bytes (< 256, the
    declaration's own bound): fed whole it is not-well-formed at 0; when a feed() ends past
    the limit inside it, policy-violation at the limit."""
    errors = {r[1] for r in results}
    if (
        payload.startswith(b"<?xml")
        and ("policy-violation", limit) in errors
        and ("not-well-formed", 0) in errors
    ):
        raise Finding(f"a broken XML declaration's verdict depends on the chunking: {errors}")


def _header_within_limit(payload: bytes, results: list[tuple[object, ...]], limit: int) -> None:
    """tokenizer.py: max_stanza_bytes bounds "one top-level element (and ... the stream
    header)", a crossed limit raises policy-violation as soon as it is crossed — in any
    chunking. (Checked before the chunking comparison so that this one open finding is told
    apart from any other dependence on the chunking.)"""
    for tokens, error, *_ in results:
        for token in tokens:  # type: ignore[attr-defined]
            if token[0] == "open":
                end = payload.find(token[1]) + len(token[1])
                if end > limit:
                    raise Finding(f"stream header ending at byte {end} accepted (limit {limit})")
        opened = any(t[0] == "open" for t in tokens)  # type: ignore[attr-defined]
        if error == ("policy-violation", limit) and not opened:
            others = [r[1] for r in results]
            if any(e != error for e in others):
                raise Finding(f"header limit enforced only in some chunkings: {others}")


def _errors(results: list[tuple[object, ...]]) -> list[tuple[str, int]]:
    return sorted({r[1] for r in results if r[1] is not None}, key=lambda e: (e[1], e[0]))  # type: ignore[index,return-value]


def _limit_crossed_first(results: list[tuple[object, ...]]) -> None:
    """A limit (max_stanza_bytes, max_name_bytes) crossed before (or at) another error: the limit's
    policy-violation at the crossing is the verdict (tokenizer.py: "as soon as it is crossed"),
    whatever the chunking; a later error (or a later limit) must not win when the construct
    arrives whole."""
    errors = _errors(results)
    if len(errors) > 1:
        first = errors[0][1]
        if any(c == "policy-violation" for c, o in errors if o == first):
            raise Finding(f"a later error won over a crossed limit in some chunking: {errors}")


def _earlier_error_lost_to_a_limit(results: list[tuple[object, ...]]) -> None:
    """The reverse of _limit_crossed_first: an error *before* the crossing (an end-tag name
    that does not match, longer than max_name_bytes) is the verdict fed whole, but when a
    feed() ends inside the name past the limit, the limit's policy-violation wins."""
    errors = _errors(results)
    if (
        len(errors) > 1
        and errors[0][0] != "policy-violation"
        and any(c == "policy-violation" for c, _ in errors[1:])
    ):
        raise Finding(f"a crossed limit won over an earlier error in some chunking: {errors}")


def _reference_verdict(results: list[tuple[object, ...]]) -> None:
    """An entity reference followed by bytes that are not UTF-8: not-well-formed fed whole,
    restricted-xml (undefined entity) at the same offset in small chunks."""
    errors = _errors(results)
    conditions = {c for c, _ in errors}
    if (
        len(errors) == 2
        and conditions == {"not-well-formed", "restricted-xml"}
        and errors[0][1] == errors[1][1]
    ):
        raise Finding(f"the verdict on a reference depends on the chunking: {errors}")


@harness(EXPECTED, KNOWN)
def check(data: bytes) -> None:
    if len(data) < 2:
        return
    flags, seed, payload = data[0], data[1], data[2:]
    limits = SMALL_LIMITS if flags & 1 else {}
    if flags & 2:
        payload = HEADER + payload
    whole = run([payload], limits)
    pieces = run(split_at(payload, random_cuts(payload, seed)), limits)
    results = [whole, pieces]
    if len(payload) <= 512:
        results.append(run([payload[i : i + 1] for i in range(len(payload))], limits))
    _declaration_before_limit(payload, results, limits.get("max_stanza_bytes", 262144))
    _limit_crossed_first(results)
    _earlier_error_lost_to_a_limit(results)
    _reference_verdict(results)
    _header_within_limit(payload, results, limits.get("max_stanza_bytes", 262144))
    if pieces != whole:
        raise Finding(f"chunking changed the result:\nwhole:  {whole!r}\npieces: {pieces!r}")
    if len(results) == 3:
        bytewise = results[2]
        if bytewise != whole:
            raise Finding(f"1-byte chunks changed the result:\nwhole: {whole!r}\n1-byte: {bytewise!r}")


TestOneInput = check

SEEDS = [
    b"\x02\x00<message from='a@fabrikam.test' to='b@contoso.test' type='chat'><body>hi &amp; &#x263a;</body></message></stream:stream>",
    b"\x00\x07" + HEADER + b"<db:result from='fabrikam.test' to='contoso.test'>abc</db:result> \n ",
    b"\x01\x03" + HEADER + b"<iq type='get' id='1'><query xmlns='http://jabber.org/protocol/disco#info'><![CDATA[x]]></query></iq>",
    b"\x00\x09" + HEADER + b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/><?xml version='1.0'?>",
    b"\x02\x11<p:x xmlns:p='urn:p' p:a='1' b=\"2\" xml:lang='en'><y/>t</p:x>",
]
