"""Serialize an :class:`~edgeproxy.tokenizer.Element` tree to UTF-8 XML bytes.

Theory of operation
-------------------
The output is meant to be re-parsed by any conforming XML parser (and by our own tokenizer) into
an equal tree, so every choice below is about round-tripping under XML 1.0 (5th ed.) and
Namespaces in XML 1.0:

* Element names are written unprefixed; an element declares ``xmlns="…"`` exactly when its
  namespace differs from its parent's (``parent_namespace`` for the root, so a stanza written
  into a ``jabber:server`` stream passes ``parent_namespace="jabber:server"``). Changing back to
  no namespace writes ``xmlns=""``.
* Attribute keys follow the tokenizer's convention: ``local`` for unprefixed attributes,
  ``{namespace}local`` for namespaced ones. The XML namespace is written as ``xml:`` and never
  declared; any other namespace gets a prefix ``ns0``, ``ns1``… declared on the same element.
* Text escapes ``&``, ``<`` and ``>`` (so ``]]>`` cannot appear) and writes CR as ``&#13;``:
  a raw CR would come back as LF after end-of-line normalisation (XML 1.0 §2.11).
* Attribute values are double-quoted and escape ``&``, ``<`` and ``"``; TAB, LF and CR become
  ``&#9;``, ``&#10;``, ``&#13;`` since a parser normalises raw ones to spaces (XML 1.0 §3.3.3).
* Characters outside the XML 1.0 ``Char`` production (C0 controls other than TAB/LF/CR, lone
  surrogates, U+FFFE/U+FFFF) cannot be represented at all, not even as character references:
  they raise :class:`ValueError`, as do names that are not NCNames and namespace uses that
  Namespaces in XML forbids. Nothing is written silently wrong.

The walk is iterative, so arbitrarily deep trees cannot exhaust the Python stack.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Final

from edgeproxy.xmpp.namespaces import NS_XML, NS_XMLNS

if TYPE_CHECKING:
    from edgeproxy.tokenizer import Element

__all__ = ["serialize"]

_FORBIDDEN_CHAR: Final = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")

_NAME_START: Final = (
    "A-Z_a-z\xc0-\xd6\xd8-\xf6\xf8-\u02ff\u0370-\u037d\u037f-\u1fff\u200c-\u200d"
    "\u2070-\u218f\u2c00-\u2fef\u3001-\ud7ff\uf900-\ufdcf\ufdf0-\ufffd\U00010000-\U000effff"
)
_NAME_CHAR: Final = _NAME_START + r"\-.0-9\xb7\u0300-\u036f\u203f-\u2040"
#: Namespaces in XML 1.0 [4] NCName: an XML Name without colons.
_NCNAME: Final = re.compile(f"[{_NAME_START}][{_NAME_CHAR}]*")


def _check_chars(value: str, what: str) -> None:
    bad = _FORBIDDEN_CHAR.search(value)
    if bad is not None:
        raise ValueError(
            f"{what} contains U+{ord(bad.group()):04X} at index {bad.start()}, "
            "which XML 1.0 cannot represent"
        )


#: Names already found to be NCNames (a stanza uses a handful, again and again); bounded.
_KNOWN_NCNAMES: Final[set[str]] = set()
_MAX_KNOWN_NCNAMES: Final = 4096
#: Anything in text or an attribute value that needs escaping or cannot be represented: a
#: value without a match is written as it is (one scan instead of a check and the replaces).
_TEXT_SPECIAL: Final = re.compile(f"[&<>\r]|{_FORBIDDEN_CHAR.pattern}")
_ATTR_SPECIAL: Final = re.compile(f"[&<\"\t\n\r]|{_FORBIDDEN_CHAR.pattern}")


def _check_ncname(name: str, what: str) -> None:
    if name in _KNOWN_NCNAMES:
        return
    if _NCNAME.fullmatch(name) is None:
        raise ValueError(f"{what} {name!r} is not an XML NCName")
    if len(_KNOWN_NCNAMES) < _MAX_KNOWN_NCNAMES:
        _KNOWN_NCNAMES.add(name)


def _escape_text(text: str) -> str:
    if _TEXT_SPECIAL.search(text) is None:
        return text
    _check_chars(text, "text")
    return (
        text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\r", "&#13;")
    )


def _escape_attr(value: str, what: str = "attribute value") -> str:
    if _ATTR_SPECIAL.search(value) is None:
        return value
    _check_chars(value, what)
    return (
        value.replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace('"', "&quot;")
        .replace("\t", "&#9;")
        .replace("\n", "&#10;")
        .replace("\r", "&#13;")
    )


def _start_tag(element: Element, parent_namespace: str, out: list[str]) -> None:
    name = element.name
    _check_ncname(name, "element name")
    out.append("<")
    out.append(name)
    namespace = element.namespace
    if namespace != parent_namespace:
        if namespace in (NS_XML, NS_XMLNS):
            raise ValueError(f"element {name!r} cannot be in the reserved namespace {namespace!r}")
        out.append(' xmlns="')
        out.append(_escape_attr(namespace, "namespace name"))
        out.append('"')
    prefixes: dict[str, str] = {}
    for key, value in element.attrs.items():
        if key.startswith("{"):
            close = key.find("}")
            if close < 0:
                raise ValueError(f"attribute key {key!r} has no closing '}}'")
            attr_ns, local = key[1:close], key[close + 1 :]
            _check_ncname(local, "attribute name")
            if attr_ns == NS_XML:
                qname = "xml:" + local
            elif attr_ns in ("", NS_XMLNS):
                raise ValueError(
                    f"attribute key {key!r}: namespace declarations are not attributes"
                )
            else:
                prefix = prefixes.get(attr_ns)
                if prefix is None:
                    prefix = f"ns{len(prefixes)}"
                    prefixes[attr_ns] = prefix
                    out.append(f' xmlns:{prefix}="{_escape_attr(attr_ns, "namespace name")}"')
                qname = f"{prefix}:{local}"
        else:
            _check_ncname(key, "attribute name")
            if key == "xmlns":
                raise ValueError("'xmlns' is a namespace declaration, not an attribute")
            qname = key
        out.append(f' {qname}="{_escape_attr(value)}"')


def serialize(element: Element, *, parent_namespace: str = "") -> bytes:
    """Return ``element`` as UTF-8 XML bytes.

    ``parent_namespace`` is the default namespace in scope where the bytes will be placed (for a
    stanza inside an s2s stream, ``"jabber:server"``); the root declares ``xmlns`` only if its
    namespace differs. Raises :class:`ValueError` for anything XML cannot represent: forbidden
    characters, names that are not NCNames, reserved namespaces.
    """
    out: list[str] = []
    # Work items: (node, namespace of its parent) or an end tag, already rendered.
    stack: list[tuple[Element | str, str] | str] = [(element, parent_namespace)]
    pop = stack.pop
    push = stack.append
    while stack:
        item = pop()
        if isinstance(item, str):
            out.append(item)
            continue
        node, parent_ns = item
        if isinstance(node, str):
            out.append(_escape_text(node))
            continue
        _start_tag(node, parent_ns, out)
        children = [child for child in node.children if not isinstance(child, str) or child]
        if not children:
            out.append("/>")
            continue
        out.append(">")
        push(f"</{node.name}>")
        namespace = node.namespace
        for child in reversed(children):
            push((child, namespace))
    return "".join(out).encode("utf-8")
