"""The XMPP stream tokenizer: the only import site of the compiled ``_fastxml`` module.

Theory of operation
-------------------
An XMPP stream (RFC 6120 §4) is one long XML document: a stream header start tag, then top-level
elements ("stanzas", in the wide sense: features, dialback, iq, message, presence …), then the
stream end tag. :class:`Tokenizer` is fed the bytes as they arrive, in any chunking, and returns
tokens as soon as they are complete:

* :class:`StreamOpen` — the stream header (qualified name, namespace, attributes, namespace
  declarations in scope);
* :class:`Stanza` — one complete top-level element: its routing view (``name``, ``namespace``,
  ``to``, ``from_``, ``type``, ``id``) and ``raw``, the exact bytes received; ``element()``
  parses it into an :class:`Element` tree on demand;
* :class:`StreamClose` — ``</stream:stream>``.

Whitespace between stanzas (keep-alives, RFC 6120 §4.6.1) is counted in ``whitespace_bytes`` and
never emitted. Everything RFC 6120 §11 forbids is rejected as it arrives, without buffering to
the end of the construct: comments, processing instructions (an XML declaration is allowed only
at the very start of a stream), DTDs, entity references other than the five predefined ones,
characters outside XML 1.0 ``Char``, bytes that are not UTF-8, unbound prefixes, mismatched tags,
duplicate attributes (also after namespace expansion) and ``<`` in attribute values. CDATA
sections, character references and both quote styles are accepted. Errors raise
:class:`TokenizerError` with ``condition`` (the RFC 6120 §4.9.3 stream error to send) and
``offset`` (bytes since the stream (re)start) and ``tokens`` (the tokens that the failing
``feed()`` call completed before the error: stanzas before a broken one are well-formed and
may be processed). The tokenizer is then dead until ``reset()``. Non-whitespace text between stanzas is refused
with ``bad-format`` (RFC 6120 §11.7 allows only whitespace there; the corpus calls this a
policy choice, and on a security edge we take the strict one).

Stream restarts (RFC 6120 §5.3.3 after STARTTLS, §6.4.6 after SASL): after a top-level
``<starttls/>`` or ``<proceed/>`` (TLS namespace) or ``<success/>`` (SASL namespace) the
tokenizer *halts*: it parses nothing more, and keeps any bytes that followed in
``trailing_bytes``. Bytes there are a protocol error (they must not be fed to TLS, nor parsed as
the new stream). The caller then calls :meth:`Tokenizer.reset` to begin the new stream.

Limits (named, with their origin; a crossed limit raises ``policy-violation`` as soon as it is
crossed, so memory is bounded whatever the input):

``max_stanza_bytes`` = 262144
    Bytes of one top-level element (and of the stream header). 256 KiB is ejabberd's default
    ``max_stanza_size`` for s2s and the value XEP-0478 examples use; Prosody's s2s default is
    512 KiB (``s2s_stanza_size_limit``).
``max_depth`` = 64
    Element nesting inside the stream. Real stanzas nest about 10 deep (MAM-forwarded XHTML-IM
    is the deepest common case); libxml2 stops at 256.
``max_attributes`` = 64
    Attributes (namespace declarations included) on one element; real stanzas carry under 10.
    Keeps the duplicate-attribute check cheap for any input.
``max_name_bytes`` = 1024
    Bytes of one element or attribute qualified name.
"""

from __future__ import annotations

from edgeproxy._fastxml import (
    DEFAULT_MAX_ATTRIBUTES,
    DEFAULT_MAX_DEPTH,
    DEFAULT_MAX_NAME_BYTES,
    DEFAULT_MAX_STANZA_BYTES,
    Element,
    Stanza,
    StreamClose,
    StreamOpen,
    Tokenizer,
    TokenizerError,
)

Token = StreamOpen | Stanza | StreamClose

NS_STREAMS = "http://etherx.jabber.org/streams"
NS_XML = "http://www.w3.org/XML/1998/namespace"

__all__ = [
    "DEFAULT_MAX_ATTRIBUTES",
    "DEFAULT_MAX_DEPTH",
    "DEFAULT_MAX_NAME_BYTES",
    "DEFAULT_MAX_STANZA_BYTES",
    "NS_STREAMS",
    "NS_XML",
    "Element",
    "Stanza",
    "StreamClose",
    "StreamOpen",
    "Token",
    "Tokenizer",
    "TokenizerError",
]
