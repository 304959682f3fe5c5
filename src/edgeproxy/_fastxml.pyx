# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Incremental XMPP stream tokenizer (private; use ``edgeproxy.tokenizer``).

Theory of operation
-------------------
One resumable state machine over bytes. ``feed()`` scans only bytes it has not seen: the state
(which construct we are in, where its names and values start) is kept between calls, so a
stanza cut into any number of chunks costs the same as one chunk. The only things re-scanned
after a chunk boundary are *atomic units* of at most a few dozen bytes: a UTF-8 sequence, an
entity or character reference, the lookahead after ``<`` (``<![CDATA[``), and ``]]>``.

Working memory: when no partial stanza is pending, the incoming chunk is scanned in place; the
unfinished tail (a partial stanza, at most ``max_stanza_bytes``) is copied into ``_buf`` and the
next chunk is appended there. All positions kept between calls are absolute indices into the
working memory; ``_rebase`` shifts them when consumed bytes are dropped. Stream-level namespace
bindings (from the stream header) point into the immutable ``_hdr_raw`` bytes instead.

Validation is the XML 1.0 well-formedness the stream needs plus RFC 6120 §11 restrictions: no
comments, PIs, DTDs or non-predefined entities; Char production; strict UTF-8 (RFC 3629: no
overlongs, surrogates or code points above U+10FFFF); Namespaces in XML 1.0 (bound prefixes,
no ``xmlns:p=''``, ``xml``/``xmlns`` reserved, unique expanded attribute names).

The element tree (``Stanza.element()``) is built by a second, non-validating pass over the raw
bytes of one stanza, which the scanner has already proved well-formed.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memchr, memcmp, memcpy

import re

# How this module was built, for ``edgeproxy --version`` (read at compile time from the C
# preprocessor: Cython's version, the compiler, the flags setup.py passed, the SIMD sets enabled).
cdef extern from *:
    """
    #ifndef EDGEPROXY_CFLAGS
    #define EDGEPROXY_CFLAGS ""
    #endif
    #if defined(__clang__)
    #define EDGEPROXY_COMPILER "clang " __clang_version__
    #elif defined(__GNUC__)
    #define EDGEPROXY_COMPILER "GCC " __VERSION__
    #else
    #define EDGEPROXY_COMPILER "an unknown compiler"
    #endif
    static const char edgeproxy_build_compiler[] = EDGEPROXY_COMPILER;
    static const char edgeproxy_build_cflags[] = EDGEPROXY_CFLAGS;
    static const unsigned long edgeproxy_build_cython = CYTHON_HEX_VERSION;
    static const int edgeproxy_build_sse2 =
    #ifdef __SSE2__
        1;
    #else
        0;
    #endif
    static const int edgeproxy_build_sse42 =
    #ifdef __SSE4_2__
        1;
    #else
        0;
    #endif
    static const int edgeproxy_build_avx2 =
    #ifdef __AVX2__
        1;
    #else
        0;
    #endif
    """
    const char edgeproxy_build_compiler[]
    const char edgeproxy_build_cflags[]
    const unsigned long edgeproxy_build_cython
    const int edgeproxy_build_sse2
    const int edgeproxy_build_sse42
    const int edgeproxy_build_avx2

BUILD_INFO = {
    "cython": "%d.%d.%d" % (
        (edgeproxy_build_cython >> 24) & 0xFF,
        (edgeproxy_build_cython >> 16) & 0xFF,
        (edgeproxy_build_cython >> 8) & 0xFF,
    ),
    "compiler": edgeproxy_build_compiler.decode("ascii", "replace"),
    "cflags": edgeproxy_build_cflags.decode("ascii", "replace"),
    "simd": [name for name, on in (
        ("SSE2", edgeproxy_build_sse2),
        ("SSE4.2", edgeproxy_build_sse42),
        ("AVX2", edgeproxy_build_avx2),
    ) if on],
}

DEFAULT_MAX_STANZA_BYTES = 262144
DEFAULT_MAX_DEPTH = 64
DEFAULT_MAX_ATTRIBUTES = 64
DEFAULT_MAX_NAME_BYTES = 1024

# Longest entity/character reference we wait for before deciding (an atomic unit).
DEF MAX_REF_BYTES = 40
# Longest XML declaration we wait for.
DEF MAX_XMLDECL_BYTES = 256

cdef str NS_XML = "http://www.w3.org/XML/1998/namespace"
cdef str NS_XMLNS = "http://www.w3.org/2000/xmlns/"
cdef str NS_STREAMS = "http://etherx.jabber.org/streams"
cdef str NS_TLS = "urn:ietf:params:xml:ns:xmpp-tls"
cdef str NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
cdef bytes B_NS_XML = b"http://www.w3.org/XML/1998/namespace"
cdef bytes B_NS_XMLNS = b"http://www.w3.org/2000/xmlns/"
cdef bytes B_NS_STREAMS = b"http://etherx.jabber.org/streams"

cdef str S_MESSAGE = "message"
cdef str S_PRESENCE = "presence"
cdef str S_IQ = "iq"

_XMLDECL_RE = re.compile(
    rb"<\?xml[ \t\r\n]+version[ \t\r\n]*=[ \t\r\n]*(?:'1\.[0-9]+'|\"1\.[0-9]+\")"
    rb"(?:[ \t\r\n]+encoding[ \t\r\n]*=[ \t\r\n]*(?:'([A-Za-z][A-Za-z0-9._-]*)'|\"([A-Za-z][A-Za-z0-9._-]*)\"))?"
    rb"(?:[ \t\r\n]+standalone[ \t\r\n]*=[ \t\r\n]*(?:'(?:yes|no)'|\"(?:yes|no)\"))?"
    rb"[ \t\r\n]*\?>\Z"
)


class TokenizerError(Exception):
    """The stream is broken; close it with the RFC 6120 stream error ``condition``.

    ``offset`` counts bytes since the stream (re)start; ``tokens`` are the tokens completed by
    the failing ``feed()`` call before the error (they are well-formed and may be processed).
    """

    def __init__(self, message, condition, offset, tokens=None):
        Exception.__init__(self, message)
        self.condition = condition
        self.offset = offset
        self.tokens = tokens if tokens is not None else []

    def __reduce__(self):
        return (TokenizerError, (self.args[0], self.condition, self.offset, self.tokens))


# ---------------------------------------------------------------------------------------------
# byte classes and the bulk scanners (C: SSE2 where the compiler targets it, scalar otherwise)
# ---------------------------------------------------------------------------------------------

cdef extern from *:
    """
    #include <stddef.h>
    #if defined(__SSE2__)
    #include <emmintrin.h>
    #endif
    typedef struct {
        Py_ssize_t name_off;
        Py_ssize_t name_len;
        Py_ssize_t colon;      /* offset of ':' inside the name, -1 if none */
        Py_ssize_t val_off;
        Py_ssize_t val_len;
        int amp;               /* value needs decoding (reference or raw TAB/LF/CR) */
    } ep_attr;
    static unsigned char ep_name_start[256];
    static unsigned char ep_name_char[256];
    static unsigned char ep_ws[256];
    static unsigned char ep_text_plain[256];
    static unsigned char ep_value_plain[256];
    static unsigned char ep_cdata_plain[256];

    /* First index >= i whose byte is not in `plain` (or n). The SIMD pass flags '<', '&',
       the extra byte, every byte < 0x20 and every byte >= 0x80 (signed compare); a flagged
       byte that the table allows (TAB, LF, CR) is stepped over. */
    static inline Py_ssize_t ep_skip(const unsigned char* p, Py_ssize_t i, Py_ssize_t n,
                                     const unsigned char* plain, unsigned char x1, unsigned char x2) {
    #if defined(__SSE2__)
        const __m128i lt = _mm_set1_epi8('<'), amp = _mm_set1_epi8('&');
        const __m128i v1 = _mm_set1_epi8((char)x1), v2 = _mm_set1_epi8((char)x2);
        const __m128i sp = _mm_set1_epi8(0x20);
        for (;;) {
            while (i + 16 <= n) {
                __m128i v = _mm_loadu_si128((const __m128i*)(p + i));
                __m128i m = _mm_or_si128(
                    _mm_or_si128(_mm_cmpeq_epi8(v, lt), _mm_cmpeq_epi8(v, amp)),
                    _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(v, v1), _mm_cmpeq_epi8(v, v2)),
                                 _mm_cmplt_epi8(v, sp)));
                int mask = _mm_movemask_epi8(m);
                if (mask) { i += __builtin_ctz((unsigned)mask); break; }
                i += 16;
            }
            if (i + 16 > n) break;
            if (!plain[p[i]]) return i;
            i++;
        }
    #endif
        while (i < n && plain[p[i]]) i++;
        return i;
    }

    /* An ASCII name (at most one colon, not first or last) from p[j]; returns its end or -1
       when it cannot be decided here (data ends, non-ASCII, odd colon use). */
    static inline Py_ssize_t ep_fast_name(const unsigned char* p, Py_ssize_t j, Py_ssize_t n,
                                          Py_ssize_t* colon) {
        *colon = -1;
        if (j >= n || !ep_name_start[p[j]]) return -1;
        for (;;) {
            while (j < n && ep_name_char[p[j]]) j++;
            if (j >= n) return -1;
            if (p[j] != ':') return j;
            if (*colon >= 0) return -1;
            *colon = j++;
            if (j >= n || !ep_name_start[p[j]]) return -1;
        }
    }

    /* Fast path for a start tag that is complete in the buffer, plain ASCII names, values
       without character references or non-ASCII bytes: the common case on the wire. Returns
       the index after '>' (0 = not applicable: the general state machine takes over from
       the same '<' and reports any error precisely). */
    static Py_ssize_t ep_fast_stag(const unsigned char* p, Py_ssize_t i, Py_ssize_t n,
                                   ep_attr* attrs, Py_ssize_t max_attrs, Py_ssize_t max_name,
                                   Py_ssize_t* nattrs, Py_ssize_t* name_end,
                                   Py_ssize_t* el_colon, int* empty) {
        Py_ssize_t j, na = 0, colon;
        j = ep_fast_name(p, i + 1, n, &colon);
        if (j < 0 || j - (i + 1) > max_name) return 0;
        *name_end = j;
        *el_colon = colon;
        for (;;) {
            int ws = 0;
            unsigned char c, q;
            ep_attr* a;
            while (j < n && ep_ws[p[j]]) { j++; ws = 1; }
            if (j >= n) return 0;
            c = p[j];
            if (c == '>') { *empty = 0; *nattrs = na; return j + 1; }
            if (c == '/') {
                if (j + 1 < n && p[j + 1] == '>') { *empty = 1; *nattrs = na; return j + 2; }
                return 0;
            }
            if (!ws || na >= max_attrs) return 0;
            a = &attrs[na];
            a->name_off = j;
            j = ep_fast_name(p, j, n, &colon);
            if (j < 0 || j - a->name_off > max_name) return 0;
            a->name_len = j - a->name_off;
            a->colon = colon;
            while (j < n && ep_ws[p[j]]) j++;
            if (j >= n || p[j] != '=') return 0;
            j++;
            while (j < n && ep_ws[p[j]]) j++;
            if (j >= n) return 0;
            q = p[j];
            if (q != 34 && q != 39) return 0;
            a->val_off = ++j;
            a->amp = 0;
            for (;;) {
                j = ep_skip(p, j, n, ep_value_plain, 34, 39);
                if (j >= n) return 0;
                c = p[j];
                if (c == q) break;
                if (c == 34 || c == 39) { j++; continue; }
                if (c == 9 || c == 10 || c == 13) { j++; a->amp = 1; continue; }
                if (c == '&' && j + 4 < n && p[j + 1] == 'a' && p[j + 2] == 'm' && p[j + 3] == 'p' && p[j + 4] == ';') {
                    j += 5; a->amp = 1; continue;
                }
                return 0;
            }
            a->val_len = j - a->val_off;
            j++;
            na++;
        }
    }

    /* Validate a run of multi-byte UTF-8 sequences from p[i] (p[i] >= 0x80), strictly
       (RFC 3629) and against XML Char (no U+FFFE/U+FFFF). Stops at the first ASCII byte.
       *status: 0 ok, 1 a valid prefix cut by the end of data (returned index = its start),
       2 invalid UTF-8, 3 a non-Char code point (returned index = the bad sequence). */
    static inline Py_ssize_t ep_utf8_run(const unsigned char* p, Py_ssize_t i, Py_ssize_t n, int* status) {
        while (i < n) {
            unsigned char c = p[i];
            if (c < 0x80) break;
            if (c < 0xC2) { *status = 2; return i; }
            if (c < 0xE0) {
                if (i + 1 >= n) { *status = 1; return i; }
                if ((p[i + 1] & 0xC0) != 0x80) { *status = 2; return i; }
                i += 2;
            } else if (c < 0xF0) {
                unsigned char lo = c == 0xE0 ? 0xA0 : 0x80, hi = c == 0xED ? 0x9F : 0xBF;
                if (i + 1 >= n) { *status = 1; return i; }
                if (p[i + 1] < lo || p[i + 1] > hi) { *status = 2; return i; }
                if (i + 2 >= n) { *status = 1; return i; }
                if ((p[i + 2] & 0xC0) != 0x80) { *status = 2; return i; }
                if (c == 0xEF && p[i + 1] == 0xBF && p[i + 2] >= 0xBE) { *status = 3; return i; }
                i += 3;
            } else if (c < 0xF5) {
                unsigned char lo = c == 0xF0 ? 0x90 : 0x80, hi = c == 0xF4 ? 0x8F : 0xBF;
                if (i + 1 >= n) { *status = 1; return i; }
                if (p[i + 1] < lo || p[i + 1] > hi) { *status = 2; return i; }
                if (i + 2 >= n) { *status = 1; return i; }
                if ((p[i + 2] & 0xC0) != 0x80) { *status = 2; return i; }
                if (i + 3 >= n) { *status = 1; return i; }
                if ((p[i + 3] & 0xC0) != 0x80) { *status = 2; return i; }
                i += 4;
            } else { *status = 2; return i; }
        }
        *status = 0;
        return i;
    }
    """
    ctypedef struct Attr "ep_attr":
        Py_ssize_t name_off
        Py_ssize_t name_len
        Py_ssize_t colon
        Py_ssize_t val_off
        Py_ssize_t val_len
        int amp
    unsigned char ep_name_start[256]
    unsigned char ep_name_char[256]
    unsigned char ep_ws[256]
    unsigned char ep_text_plain[256]
    unsigned char ep_value_plain[256]
    unsigned char ep_cdata_plain[256]
    Py_ssize_t ep_skip(const unsigned char* p, Py_ssize_t i, Py_ssize_t n,
                       const unsigned char* plain, unsigned char x1, unsigned char x2) nogil
    Py_ssize_t ep_utf8_run(const unsigned char* p, Py_ssize_t i, Py_ssize_t n, int* status) nogil
    Py_ssize_t ep_fast_stag(const unsigned char* p, Py_ssize_t i, Py_ssize_t n,
                            Attr* attrs, Py_ssize_t max_attrs, Py_ssize_t max_name,
                            Py_ssize_t* nattrs, Py_ssize_t* name_end,
                            Py_ssize_t* el_colon, int* empty) nogil

cdef unsigned char TEXT_PLAIN[256]    # text bytes needing no attention
cdef unsigned char VALUE_PLAIN[256]   # attribute value bytes needing no attention (not quotes)
cdef unsigned char NAME_START[256]    # ASCII NameStartChar (':' handled apart)
cdef unsigned char NAME_CHAR[256]     # ASCII NameChar (':' handled apart)
cdef unsigned char IS_WS[256]
cdef unsigned char CDATA_PLAIN[256]   # CDATA bytes needing no attention


cdef void _init_tables():
    cdef int c
    for c in range(256):
        TEXT_PLAIN[c] = 0
        VALUE_PLAIN[c] = 0
        NAME_START[c] = 0
        NAME_CHAR[c] = 0
        IS_WS[c] = 0
        CDATA_PLAIN[c] = 0
    for c in range(0x20, 0x80):
        TEXT_PLAIN[c] = 1
        VALUE_PLAIN[c] = 1
    for c in (9, 10, 13):
        TEXT_PLAIN[c] = 1
        VALUE_PLAIN[c] = 1
    for c in (ord('<'), ord('&'), ord(']')):
        TEXT_PLAIN[c] = 0
    for c in range(256):
        CDATA_PLAIN[c] = TEXT_PLAIN[c]
    CDATA_PLAIN[ord('<')] = 1
    CDATA_PLAIN[ord('&')] = 1
    for c in (ord('<'), ord('&'), ord('"'), ord("'"), 9, 10, 13):
        VALUE_PLAIN[c] = 0
    for c in range(ord('a'), ord('z') + 1):
        NAME_START[c] = 1
    for c in range(ord('A'), ord('Z') + 1):
        NAME_START[c] = 1
    NAME_START[ord('_')] = 1
    for c in range(256):
        NAME_CHAR[c] = NAME_START[c]
    for c in range(ord('0'), ord('9') + 1):
        NAME_CHAR[c] = 1
    NAME_CHAR[ord('-')] = 1
    NAME_CHAR[ord('.')] = 1
    for c in (9, 10, 13, 32):
        IS_WS[c] = 1
    for c in range(256):
        ep_text_plain[c] = TEXT_PLAIN[c]
        ep_value_plain[c] = VALUE_PLAIN[c]
        ep_cdata_plain[c] = CDATA_PLAIN[c]
        ep_name_start[c] = NAME_START[c]
        ep_name_char[c] = NAME_CHAR[c]
        ep_ws[c] = IS_WS[c]


_init_tables()


cdef inline bint _is_char(unsigned int cp) noexcept nogil:
    # XML 1.0 [2] Char, for code points >= 0x80 or from character references
    if cp < 0x20:
        return cp == 9 or cp == 10 or cp == 13
    if cp <= 0xD7FF:
        return True
    if cp < 0xE000:
        return False
    if cp <= 0xFFFD:
        return True
    if cp < 0x10000:
        return False
    return cp <= 0x10FFFF


cdef inline bint _is_name_start_cp(unsigned int cp) noexcept nogil:
    # XML 1.0 (5th ed.) [4] NameStartChar, non-ASCII part
    return ((0xC0 <= cp <= 0xD6) or (0xD8 <= cp <= 0xF6) or (0xF8 <= cp <= 0x2FF)
            or (0x370 <= cp <= 0x37D) or (0x37F <= cp <= 0x1FFF) or (0x200C <= cp <= 0x200D)
            or (0x2070 <= cp <= 0x218F) or (0x2C00 <= cp <= 0x2FEF) or (0x3001 <= cp <= 0xD7FF)
            or (0xF900 <= cp <= 0xFDCF) or (0xFDF0 <= cp <= 0xFFFD) or (0x10000 <= cp <= 0xEFFFF))


cdef inline bint _is_name_cp(unsigned int cp) noexcept nogil:
    # [4a] NameChar, non-ASCII part
    return (_is_name_start_cp(cp) or cp == 0xB7 or (0x300 <= cp <= 0x36F)
            or (0x203F <= cp <= 0x2040))


# Results of the atomic-unit helpers
DEF NEED_MORE = 0
DEF BAD_UTF8 = -1
DEF BAD_CHAR = -2
DEF BAD_SYNTAX = -3
DEF RESTRICTED = -4


cdef inline Py_ssize_t _utf8(const unsigned char* p, Py_ssize_t i, Py_ssize_t n,
                             unsigned int* out) noexcept nogil:
    """Decode one multi-byte UTF-8 sequence at p[i] (p[i] >= 0x80), strictly (RFC 3629).

    Returns its length, NEED_MORE if it is a valid prefix cut by the end of data, or BAD_UTF8.
    """
    cdef unsigned char c = p[i]
    cdef unsigned char c1
    cdef Py_ssize_t need
    cdef unsigned int cp = 0
    cdef unsigned char lo = 0x80
    cdef unsigned char hi = 0xBF
    if c < 0xC2:
        return BAD_UTF8          # continuation byte or overlong 2-byte lead
    elif c < 0xE0:
        need = 2
        cp = c & 0x1F
    elif c < 0xF0:
        need = 3
        cp = c & 0x0F
        if c == 0xE0:
            lo = 0xA0            # overlong
        elif c == 0xED:
            hi = 0x9F            # surrogates
    elif c < 0xF5:
        need = 4
        cp = c & 0x07
        if c == 0xF0:
            lo = 0x90            # overlong
        elif c == 0xF4:
            hi = 0x8F            # above U+10FFFF
    else:
        return BAD_UTF8
    if i + 1 < n:
        c1 = p[i + 1]
        if c1 < lo or c1 > hi:
            return BAD_UTF8
        cp = (cp << 6) | (c1 & 0x3F)
    else:
        return NEED_MORE
    cdef Py_ssize_t k
    for k in range(2, need):
        if i + k >= n:
            return NEED_MORE
        c1 = p[i + k]
        if c1 < 0x80 or c1 > 0xBF:
            return BAD_UTF8
        cp = (cp << 6) | (c1 & 0x3F)
    out[0] = cp
    return need


cdef inline int _hexval(unsigned char c) noexcept nogil:
    if 48 <= c <= 57:
        return c - 48
    if 97 <= c <= 102:
        return c - 87
    if 65 <= c <= 70:
        return c - 55
    return -1


cdef inline Py_ssize_t _predefined(const unsigned char* p, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    """Length of the common references &amp; &lt; &gt; at p[i], else 0 (use _reference)."""
    if i + 4 < n and p[i + 1] == 97 and p[i + 2] == 109 and p[i + 3] == 112 and p[i + 4] == 59:
        return 5
    if i + 3 < n and p[i + 2] == 116 and p[i + 3] == 59 and (p[i + 1] == 108 or p[i + 1] == 103):
        return 4
    return 0


cdef Py_ssize_t _reference(const unsigned char* p, Py_ssize_t i, Py_ssize_t n,
                           unsigned int* out) noexcept nogil:
    """Check the reference at p[i] == '&'. Returns its length (with ';'), or NEED_MORE /
    BAD_CHAR (a character reference to a non-Char) / BAD_SYNTAX / RESTRICTED (an entity other
    than the five predefined ones, RFC 6120 §11.1). ``out`` gets the code point."""
    cdef Py_ssize_t j = i + 1
    cdef unsigned int cp = 0
    cdef int base = 10
    cdef int v
    cdef Py_ssize_t digits = 0
    cdef Py_ssize_t start
    cdef unsigned char c
    if j >= n:
        return NEED_MORE
    if p[j] == 35:  # '#'
        j += 1
        if j >= n:
            return NEED_MORE
        if p[j] == 120:  # 'x'
            base = 16
            j += 1
        while True:
            if j >= n:
                return NEED_MORE if j - i < MAX_REF_BYTES else BAD_SYNTAX
            c = p[j]
            if c == 59:  # ';'
                break
            v = _hexval(c) if base == 16 else (c - 48 if 48 <= c <= 57 else -1)
            if v < 0:
                return BAD_SYNTAX
            digits += 1
            if j - i >= MAX_REF_BYTES:
                return BAD_SYNTAX
            cp = cp * base + v
            if cp > 0x10FFFF:
                return BAD_CHAR
            j += 1
        if digits == 0:
            return BAD_SYNTAX
        if not _is_char(cp):
            return BAD_CHAR
        out[0] = cp
        return j + 1 - i
    # entity reference: Name ';'
    start = j
    if not NAME_START[p[j]] and p[j] < 0x80:
        return BAD_SYNTAX
    while True:
        if j >= n:
            return NEED_MORE if j - i < MAX_REF_BYTES else RESTRICTED
        c = p[j]
        if c == 59:
            break
        if c < 0x80 and not NAME_CHAR[c] and c != 58:
            return BAD_SYNTAX
        if j - i >= MAX_REF_BYTES:
            return RESTRICTED
        j += 1
    cdef Py_ssize_t ln = j - start
    cdef const unsigned char* s = p + start
    if ln == 2 and s[1] == 116 and (s[0] == 108 or s[0] == 103):     # lt gt
        out[0] = 60 if s[0] == 108 else 62
    elif ln == 3 and memcmp(s, b"amp", 3) == 0:
        out[0] = 38
    elif ln == 4 and memcmp(s, b"quot", 4) == 0:
        out[0] = 34
    elif ln == 4 and memcmp(s, b"apos", 4) == 0:
        out[0] = 39
    else:
        return RESTRICTED
    return j + 1 - i


# ---------------------------------------------------------------------------------------------
# tokens
# ---------------------------------------------------------------------------------------------

cdef extern from "Python.h":
    object PyUnicode_New(Py_ssize_t size, Py_UCS4 maxchar)
    void* PyUnicode_DATA(object o)
    bint PyUnicode_IS_ASCII(object o)
    Py_ssize_t PyUnicode_GET_LENGTH(object o)

from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF, Py_XDECREF

# Names (element/attribute names, prefixes) repeat endlessly in XMPP; the tree builder keeps the
# str objects of recent short ASCII names in a small direct-mapped cache instead of decoding them
# again (bounded: NAME_CACHE_SLOTS strings of at most NAME_CACHE_MAX_LEN bytes).
DEF NAME_CACHE_SLOTS = 4096
DEF NAME_CACHE_MAX_LEN = 40
cdef PyObject* _name_cache[NAME_CACHE_SLOTS]


cdef inline str _str(const char* s, Py_ssize_t n):
    """UTF-8 bytes (already validated) to str; short ASCII strings skip the generic decoder."""
    cdef Py_ssize_t k
    cdef object u
    for k in range(n):
        if <unsigned char>s[k] >= 0x80:
            return PyUnicode_DecodeUTF8(s, n, NULL)
    u = PyUnicode_New(n, 127)
    memcpy(PyUnicode_DATA(u), s, n)
    return <str>u

cdef str _name(const unsigned char* s, Py_ssize_t n):
    """A name as str, through the cache."""
    cdef unsigned int h = 2166136261u
    cdef Py_ssize_t k
    cdef PyObject* cached
    if n > NAME_CACHE_MAX_LEN:
        return _str(<const char*>s, n)
    for k in range(n):
        h = (h ^ s[k]) * 16777619u
    h = (h ^ (h >> 15)) & (NAME_CACHE_SLOTS - 1)
    cached = _name_cache[h]
    if cached != NULL:
        u = <object>cached
        if PyUnicode_GET_LENGTH(u) == n and memcmp(PyUnicode_DATA(u), s, n) == 0:
            return <str>u
    u = _str(<const char*>s, n)
    if PyUnicode_IS_ASCII(u):
        Py_INCREF(u)
        Py_XDECREF(_name_cache[h])
        _name_cache[h] = <PyObject*>u
    return <str>u


cdef class StreamOpen:
    """The stream header (RFC 6120 §4.7): names, attributes, namespace declarations in scope."""

    cdef readonly str qname
    cdef readonly str name
    cdef readonly str namespace
    cdef readonly dict attrs
    cdef readonly dict namespaces
    cdef readonly bytes raw

    @property
    def to(self):
        return self.attrs.get("to")

    @property
    def from_(self):
        return self.attrs.get("from")

    @property
    def id(self):
        return self.attrs.get("id")

    @property
    def version(self):
        return self.attrs.get("version")

    @property
    def lang(self):
        return self.attrs.get("{" + NS_XML + "}lang")

    @property
    def default_namespace(self):
        return self.namespaces.get("", "")

    def __repr__(self):
        return f"StreamOpen({self.qname!r}, attrs={self.attrs!r})"


cdef class StreamClose:
    """``</stream:stream>``: the peer closed its stream (RFC 6120 §4.4)."""

    cdef readonly bytes raw

    def __repr__(self):
        return "StreamClose()"


cdef StreamClose _make_close(bytes raw):
    cdef StreamClose sc = StreamClose.__new__(StreamClose)
    sc.raw = raw
    return sc


cdef class Stanza:
    """One complete top-level element: the routing view and the exact bytes received."""

    cdef readonly bytes raw
    cdef str _ns
    cdef dict _scope                   # stream-level prefix -> namespace, for element()
    cdef Py_ssize_t _name_off, _name_len
    cdef Py_ssize_t _to_off, _to_len, _from_off, _from_len
    cdef Py_ssize_t _type_off, _type_len, _id_off, _id_len
    cdef int _amp                      # bit set: value needs unescaping (to, from, type, id)

    cdef inline object _attr(self, Py_ssize_t off, Py_ssize_t ln, int bit):
        if off < 0:
            return None
        cdef const char* s = PyBytes_AS_STRING(self.raw) + off
        if self._amp & bit:
            return _decode_value(<const unsigned char*>s, ln)
        return _str(s, ln)

    @property
    def name(self):
        cdef const char* s = PyBytes_AS_STRING(self.raw) + self._name_off
        cdef Py_ssize_t ln = self._name_len
        if ln == 7 and memcmp(s, b"message", 7) == 0:
            return S_MESSAGE
        if ln == 8 and memcmp(s, b"presence", 8) == 0:
            return S_PRESENCE
        if ln == 2 and s[0] == 105 and s[1] == 113:
            return S_IQ
        return _str(s, ln)

    @property
    def namespace(self):
        return self._ns

    @property
    def to(self):
        return self._attr(self._to_off, self._to_len, 1)

    @property
    def from_(self):
        return self._attr(self._from_off, self._from_len, 2)

    @property
    def type(self):
        return self._attr(self._type_off, self._type_len, 4)

    @property
    def id(self):
        return self._attr(self._id_off, self._id_len, 8)

    def element(self):
        """Parse the raw bytes into an Element tree (namespaces resolved with the stream's)."""
        return _build_tree(self.raw, self._scope)

    def __repr__(self):
        return f"Stanza({self.name!r}, ns={self._ns!r}, to={self.to!r}, from_={self.from_!r}, {len(self.raw)} bytes)"


# ---------------------------------------------------------------------------------------------
# the tokenizer
# ---------------------------------------------------------------------------------------------

cdef enum State:
    ST_PROLOG_START
    ST_PROLOG
    ST_CONTENT
    ST_LT
    ST_STAG_NAME
    ST_STAG_SPACE
    ST_ATTR_NAME
    ST_ATTR_EQ
    ST_ATTR_QUOTE
    ST_ATTR_VALUE
    ST_STAG_SLASH
    ST_ETAG_NAME
    ST_ETAG_SPACE
    ST_CDATA
    ST_CLOSED
    ST_HALTED
    ST_FAILED



cdef struct Binding:
    # prefix and namespace name; kind 0 = absolute offsets into working memory,
    # kind 1 = offsets from a stable base pointer (header bytes or a kept bytes object)
    const unsigned char* prefix_base
    const unsigned char* uri_base
    Py_ssize_t prefix_off
    Py_ssize_t prefix_len      # 0 = default namespace
    Py_ssize_t uri_off
    Py_ssize_t uri_len
    int prefix_kind
    int uri_kind
    int depth


cdef struct Open:
    const unsigned char* name_base
    Py_ssize_t name_off
    Py_ssize_t name_len
    int name_kind
    Py_ssize_t nbind           # bindings in scope before this element


cdef class Tokenizer:
    """Incremental tokenizer for one XMPP stream; see ``edgeproxy.tokenizer``."""

    cdef readonly Py_ssize_t max_stanza_bytes
    cdef readonly Py_ssize_t max_depth
    cdef readonly Py_ssize_t max_attributes
    cdef readonly Py_ssize_t max_name_bytes

    cdef bytearray _buf          # pending bytes (a partial stanza), starts at working index 0
    cdef bytes _held             # bytes received after a restart point
    cdef object _error           # the TokenizerError that ended this stream, if any
    cdef State _state
    cdef Py_ssize_t _pos         # where scanning resumes
    cdef Py_ssize_t _mark        # start of the current stanza / unconsumed stream-level bytes
    cdef Py_ssize_t _base        # stream offset of working index 0
    cdef Py_ssize_t _depth
    cdef Py_ssize_t _bytes_fed
    cdef Py_ssize_t _ws_bytes
    cdef Py_ssize_t _scanned
    # current tag
    cdef Py_ssize_t _tag_start
    cdef Py_ssize_t _name_start
    cdef Py_ssize_t _name_colon
    cdef Py_ssize_t _el_colon
    cdef Py_ssize_t _el_name_end
    cdef bint _had_ws
    cdef unsigned char _quote
    cdef Attr* _attrs
    cdef Py_ssize_t _nattrs
    # element stack and namespace bindings
    cdef Open* _stack
    cdef Binding* _binds
    cdef Py_ssize_t _nbinds
    cdef Py_ssize_t _cap_binds
    cdef list _keep              # bytes objects that stanza-level bindings point into
    cdef list _hdr_keep          # same, for the stream header's bindings
    # stream header
    cdef bytes _hdr_raw
    cdef dict _scope             # stream-level prefix -> namespace (str), "xml" included
    cdef str _hdr_default_ns     # the stream's default namespace (content namespace)
    cdef StreamOpen _open
    # routing view of the stanza being read (offsets relative to its first byte)
    cdef str _st_ns
    cdef Py_ssize_t _st_name_off, _st_name_len
    cdef Py_ssize_t _st_to_off, _st_to_len, _st_from_off, _st_from_len
    cdef Py_ssize_t _st_type_off, _st_type_len, _st_id_off, _st_id_len
    cdef int _st_amp
    cdef bint _st_restart
    cdef list _out

    def __cinit__(self):
        self._attrs = NULL
        self._stack = NULL
        self._binds = NULL

    def __init__(self, *, Py_ssize_t max_stanza_bytes=DEFAULT_MAX_STANZA_BYTES,
                 Py_ssize_t max_depth=DEFAULT_MAX_DEPTH,
                 Py_ssize_t max_attributes=DEFAULT_MAX_ATTRIBUTES,
                 Py_ssize_t max_name_bytes=DEFAULT_MAX_NAME_BYTES):
        if max_stanza_bytes < 64 or max_depth < 2 or max_attributes < 8 or max_name_bytes < 16:
            raise ValueError("tokenizer limits too small to carry an XMPP stream")
        self.max_stanza_bytes = max_stanza_bytes
        self.max_depth = max_depth
        self.max_attributes = max_attributes
        self.max_name_bytes = max_name_bytes
        self._attrs = <Attr*>malloc(sizeof(Attr) * (max_attributes + 1))
        self._stack = <Open*>malloc(sizeof(Open) * (max_depth + 2))
        self._cap_binds = 16
        self._binds = <Binding*>malloc(sizeof(Binding) * self._cap_binds)
        if self._attrs == NULL or self._stack == NULL or self._binds == NULL:
            raise MemoryError()
        self.reset()

    def __dealloc__(self):
        free(self._attrs)
        free(self._stack)
        free(self._binds)

    def reset(self):
        """Forget the stream: the next byte fed starts a new one (RFC 6120 §5.3.3, §6.4.6)."""
        self._buf = bytearray()
        self._held = b""
        self._error = None
        self._state = ST_PROLOG_START
        self._pos = 0
        self._mark = 0
        self._base = 0
        self._depth = 0
        self._bytes_fed = 0
        self._ws_bytes = 0
        self._scanned = 0
        self._nattrs = 0
        self._name_colon = -1
        self._el_colon = -1
        self._tag_start = 0
        self._name_start = 0
        self._nbinds = 0
        self._keep = []
        self._hdr_keep = []
        self._hdr_raw = None
        self._scope = {"xml": NS_XML}
        self._open = None

    # -- introspection -----------------------------------------------------------------------

    @property
    def halted(self):
        """True after a restart point (starttls/proceed/success): call reset() next."""
        return self._state == ST_HALTED

    @property
    def trailing_bytes(self):
        """Bytes received after the restart point; non-empty means the peer broke protocol."""
        return self._held

    @property
    def stream_open(self):
        return self._open

    @property
    def closed(self):
        return self._state == ST_CLOSED

    @property
    def whitespace_bytes(self):
        """Whitespace between stanzas since the stream (re)start (keep-alive accounting)."""
        return self._ws_bytes

    @property
    def bytes_fed(self):
        return self._bytes_fed

    @property
    def scanned_bytes(self):
        """Bytes the scanner has looked at since the (re)start: equal to ``bytes_fed`` up to
        the small atomic units re-read after a chunk boundary (linear work, whatever the
        chunking; a diagnostic for tests)."""
        return self._scanned

    @property
    def buffered_bytes(self):
        return len(self._buf)

    @property
    def depth(self):
        return self._depth

    # -- feeding -----------------------------------------------------------------------------

    def feed(self, data):
        """Scan ``data``; return the tokens completed by it, in order.

        Raises TokenizerError (with the tokens completed before the error in ``.tokens``); the
        stream is then dead and every later feed() raises the same error until reset().
        """
        cdef const unsigned char* p
        cdef Py_ssize_t n
        cdef bint in_place
        cdef bytes chunk
        if self._state == ST_FAILED:
            raise self._error
        if not isinstance(data, bytes):
            data = bytes(data)
        chunk = <bytes>data
        if self._state == ST_HALTED:
            self._held += chunk
            self._bytes_fed += PyBytes_GET_SIZE(chunk)
            return []
        self._bytes_fed += PyBytes_GET_SIZE(chunk)
        self._out = []
        if len(self._buf) == 0:
            in_place = True
            p = <const unsigned char*>PyBytes_AS_STRING(chunk)
            n = PyBytes_GET_SIZE(chunk)
        else:
            in_place = False
            self._buf += chunk
            p = <const unsigned char*><char*>self._buf
            n = len(self._buf)
        self._scanned += n - self._pos
        try:
            self._scan(p, n)
        except TokenizerError as exc:
            self._state = ST_FAILED
            exc.tokens = self._out
            self._error = exc
            self._out = None
            self._buf = bytearray()
            raise
        out = self._out
        cdef Py_ssize_t mark = self._mark
        if self._state == ST_HALTED:
            self._held = PyBytes_FromStringAndSize(<const char*>p + self._pos, n - self._pos)
            self._buf = bytearray()
            return out
        # bound memory: a construct still open may not exceed the stanza limit
        if (self._depth != 1 or self._state != ST_CONTENT) and n - mark > self.max_stanza_bytes \
                and self._state != ST_CLOSED:
            self._fail_limit(mark + self.max_stanza_bytes, "stanza larger than max_stanza_bytes")
        if self._state == ST_STAG_NAME or self._state == ST_ATTR_NAME or self._state == ST_ETAG_NAME:
            if n - self._name_start > self.max_name_bytes:
                self._fail_limit(self._name_start + self.max_name_bytes, "name longer than max_name_bytes")
        # keep the unfinished tail
        if in_place:
            if mark < n:
                self._buf = bytearray(PyBytes_FromStringAndSize(<const char*>p + mark, n - mark))
        elif mark > 0:
            del self._buf[:mark]
        if mark > 0:
            self._rebase(mark)
        self._out = None
        return out

    cdef _fail_limit(self, Py_ssize_t at, str what):
        exc = TokenizerError(what, "policy-violation", self._base + at, self._out)
        self._state = ST_FAILED
        self._error = exc
        self._buf = bytearray()
        raise exc

    cdef void _rebase(self, Py_ssize_t d) noexcept:
        cdef Py_ssize_t k
        self._base += d
        self._pos -= d
        self._mark -= d
        self._tag_start -= d
        self._name_start -= d
        if self._name_colon >= 0:
            self._name_colon -= d
        if self._el_colon >= 0:
            self._el_colon -= d
        self._el_name_end -= d
        for k in range(self._nattrs):
            self._attrs[k].name_off -= d
            self._attrs[k].val_off -= d
            if self._attrs[k].colon >= 0:
                self._attrs[k].colon -= d
        for k in range(self._depth):
            if self._stack[k].name_kind == 0:
                self._stack[k].name_off -= d
        for k in range(self._nbinds):
            if self._binds[k].prefix_kind == 0:
                self._binds[k].prefix_off -= d
            if self._binds[k].uri_kind == 0:
                self._binds[k].uri_off -= d

    cdef _err(self, str condition, str message, Py_ssize_t at):
        raise TokenizerError(message, condition, self._base + at)

    cdef _err_status(self, int status, Py_ssize_t at, str where):
        if status == 2:
            self._err("unsupported-encoding", "invalid UTF-8 in " + where, at)
        self._err("not-well-formed", "non-character (U+FFFE/U+FFFF) in " + where, at)

    cdef _err_unit(self, Py_ssize_t r, Py_ssize_t at, str where):
        if r == BAD_UTF8:
            self._err("unsupported-encoding", "invalid UTF-8 in " + where, at)
        elif r == BAD_CHAR:
            self._err("not-well-formed", "character not allowed in XML (" + where + ")", at)
        elif r == RESTRICTED:
            self._err("restricted-xml", "entity reference other than the five predefined ones", at)
        else:
            self._err("not-well-formed", "malformed reference in " + where, at)

    # -- the scanner -------------------------------------------------------------------------

    cdef int _scan(self, const unsigned char* p, Py_ssize_t n) except -1:
        cdef Py_ssize_t i = self._pos
        cdef State state = self._state
        cdef unsigned char c
        cdef Py_ssize_t r
        cdef unsigned int cp = 0
        cdef Py_ssize_t start
        cdef Attr* a
        cdef bint closed
        cdef int status = 0
        cdef Py_ssize_t nattrs, name_end, el_colon
        cdef int empty
        cdef Open* e
        while True:
            if state == ST_CONTENT:
                if self._depth == 1:
                    # stream level: whitespace only (RFC 6120 §11.7)
                    start = i
                    while i < n and IS_WS[p[i]]:
                        i += 1
                    self._ws_bytes += i - start
                    self._mark = i
                    if i >= n:
                        break
                    if p[i] != 60:
                        self._err("bad-format", "text between stanzas", i)
                    state = ST_LT
                    continue
                while True:
                    i = ep_skip(p, i, n, ep_text_plain, 93, 93)
                    if i >= n:
                        break
                    c = p[i]
                    if c == 60:       # '<'
                        break
                    elif c == 38:     # '&'
                        r = _predefined(p, i, n)
                        if r == 0:
                            r = _reference(p, i, n, &cp)
                        if r > 0:
                            i += r
                        elif r == NEED_MORE:
                            break
                        else:
                            self._err_unit(r, i, "text")
                    elif c == 93:     # ']'
                        if i + 1 < n and p[i + 1] != 93:
                            i += 1
                        elif i + 2 < n:
                            if p[i + 2] == 62:
                                self._err("not-well-formed", "']]>' in text", i)
                            i += 1
                        else:
                            break
                    elif c >= 0x80:
                        i = ep_utf8_run(p, i, n, &status)
                        if status:
                            if status == 1:
                                break
                            self._err_status(status, i, "text")
                    else:
                        self._err("not-well-formed", "control character in text", i)
                if i >= n or p[i] != 60:
                    break         # need more data; resume at i
                state = ST_LT
                continue

            elif state == ST_LT:
                if i + 1 >= n:
                    break
                c = p[i + 1]
                if c == 47:       # '</'
                    if self._depth == 0:
                        self._err("not-well-formed", "end tag before the stream header", i)
                    # fast path: '</' + exactly the open element's name + '>'
                    e = &self._stack[self._depth - 1]
                    if i + 2 + e.name_len < n and p[i + 2 + e.name_len] == 62 and memcmp(
                            p + i + 2, (e.name_base if e.name_kind else p) + e.name_off, e.name_len) == 0:
                        self._tag_start = i
                        i += 3 + e.name_len
                        state = self._pop(p, i)
                        if state == ST_HALTED:
                            break
                        continue
                    self._tag_start = i
                    i += 2
                    self._name_start = i
                    state = ST_ETAG_NAME
                elif c == 33:     # '<!'
                    r = self._markup_decl(p, i, n)
                    if r == 0:
                        break
                    i += r
                    state = ST_CDATA
                elif c == 63:     # '<?'
                    self._err("restricted-xml", "processing instruction", i)
                else:
                    if self._depth >= self.max_depth:
                        self._fail_limit(i, "elements nested deeper than max_depth")
                    r = ep_fast_stag(p, i, n, self._attrs, self.max_attributes, self.max_name_bytes,
                                     &nattrs, &name_end, &el_colon, &empty)
                    if r > 0:
                        self._tag_start = i
                        self._nattrs = nattrs
                        self._el_name_end = name_end
                        self._el_colon = el_colon
                        i = r
                        state = self._start_element(p, i, empty)
                        if state == ST_HALTED:
                            break
                        continue
                    self._tag_start = i
                    i += 1
                    self._name_start = i
                    self._name_colon = -1
                    self._nattrs = 0
                    state = ST_STAG_NAME
                    if c < 0x80 and not NAME_START[c]:
                        self._err("not-well-formed", "bad character at the start of a name", i)

            elif state == ST_STAG_NAME or state == ST_ATTR_NAME:
                # fast path: a plain ASCII name without prefix, ended by a delimiter
                start = i
                while i < n and NAME_CHAR[p[i]]:
                    i += 1
                if i < n and (IS_WS[p[i]] or p[i] == 61 or p[i] == 62 or p[i] == 47) \
                        and i - self._name_start <= self.max_name_bytes and (
                            self._name_colon < 0 or NAME_START[p[self._name_colon + 1]]
                            or p[self._name_colon + 1] >= 0x80):
                    r = i
                else:
                    r = self._scan_name(p, start, n)
                if r < 0:
                    i = -r - 1
                    break
                i = r
                c = p[i]
                if i == self._name_start:
                    self._err("not-well-formed", "empty name", i)
                if state == ST_STAG_NAME:
                    if c == 62 or c == 47 or IS_WS[c]:
                        self._el_colon = self._name_colon
                        self._el_name_end = i
                        state = ST_STAG_SPACE
                        self._had_ws = False
                        continue
                    self._err("not-well-formed", "unexpected character in a start tag", i)
                else:
                    if self._nattrs >= self.max_attributes:
                        self._fail_limit(i, "more attributes than max_attributes")
                    a = &self._attrs[self._nattrs]
                    a.name_off = self._name_start
                    a.name_len = i - self._name_start
                    a.colon = self._name_colon
                    self._nattrs += 1
                    state = ST_ATTR_EQ
                    continue

            elif state == ST_STAG_SPACE:
                while i < n and IS_WS[p[i]]:
                    i += 1
                    self._had_ws = True
                if i >= n:
                    break
                c = p[i]
                if c == 62:       # '>'
                    i += 1
                    state = self._start_element(p, i, False)
                    if state == ST_HALTED:
                        break
                elif c == 47:     # '/'
                    i += 1
                    state = ST_STAG_SLASH
                elif self._had_ws and (NAME_START[c] or c >= 0x80):
                    self._name_start = i
                    self._name_colon = -1
                    state = ST_ATTR_NAME
                else:
                    self._err("not-well-formed", "unexpected character in a start tag", i)

            elif state == ST_STAG_SLASH:
                if i >= n:
                    break
                if p[i] != 62:
                    self._err("not-well-formed", "'/' not followed by '>' in a start tag", i)
                i += 1
                state = self._start_element(p, i, True)
                if state == ST_HALTED:
                    break

            elif state == ST_ATTR_EQ:
                while i < n and IS_WS[p[i]]:
                    i += 1
                if i >= n:
                    break
                if p[i] != 61:    # '='
                    self._err("not-well-formed", "attribute without a value", i)
                i += 1
                state = ST_ATTR_QUOTE

            elif state == ST_ATTR_QUOTE:
                while i < n and IS_WS[p[i]]:
                    i += 1
                if i >= n:
                    break
                c = p[i]
                if c != 34 and c != 39:
                    self._err("not-well-formed", "attribute value not quoted", i)
                self._quote = c
                i += 1
                a = &self._attrs[self._nattrs - 1]
                a.val_off = i
                a.amp = 0
                state = ST_ATTR_VALUE

            elif state == ST_ATTR_VALUE:
                a = &self._attrs[self._nattrs - 1]
                while True:
                    i = ep_skip(p, i, n, ep_value_plain, 34, 39)
                    if i >= n:
                        break
                    c = p[i]
                    if c == self._quote:
                        break
                    elif c == 34 or c == 39:
                        i += 1
                    elif c == 9 or c == 10 or c == 13:
                        i += 1
                        a.amp = 1     # needs whitespace normalisation when decoded
                    elif c == 38:
                        r = _predefined(p, i, n)
                        if r == 0:
                            r = _reference(p, i, n, &cp)
                        if r > 0:
                            i += r
                            a.amp = 1
                        elif r == NEED_MORE:
                            break
                        else:
                            self._err_unit(r, i, "attribute value")
                    elif c == 60:
                        self._err("not-well-formed", "'<' in an attribute value", i)
                    elif c >= 0x80:
                        i = ep_utf8_run(p, i, n, &status)
                        if status:
                            if status == 1:
                                break
                            self._err_status(status, i, "attribute value")
                    else:
                        self._err("not-well-formed", "control character in attribute value", i)
                if i >= n or p[i] != self._quote:
                    break
                a.val_len = i - a.val_off
                i += 1
                self._had_ws = False
                state = ST_STAG_SPACE

            elif state == ST_ETAG_NAME:
                start = i
                while i < n and not IS_WS[p[i]] and p[i] != 62:
                    c = p[i]
                    if not (NAME_CHAR[c] or c == 58 or c >= 0x80):
                        self._err("not-well-formed", "character not allowed in an end tag name", i)
                    i += 1
                if i >= n:
                    break
                self._end_name(p, i)
                state = ST_ETAG_SPACE

            elif state == ST_ETAG_SPACE:
                while i < n and IS_WS[p[i]]:
                    i += 1
                if i >= n:
                    break
                if p[i] != 62:
                    self._err("not-well-formed", "unexpected character in an end tag", i)
                i += 1
                state = self._end_element(p, i)
                if state == ST_HALTED:
                    break

            elif state == ST_CDATA:
                closed = False
                while True:
                    i = ep_skip(p, i, n, ep_cdata_plain, 93, 93)
                    if i >= n:
                        break
                    c = p[i]
                    if c == 60 or c == 38:
                        i += 1
                    elif c == 93:       # ']'
                        if i + 1 < n and p[i + 1] != 93:
                            i += 1
                        elif i + 2 < n:
                            if p[i + 2] == 62:
                                i += 3
                                closed = True
                                break
                            i += 1
                        else:
                            break
                    elif c >= 0x80:
                        i = ep_utf8_run(p, i, n, &status)
                        if status:
                            if status == 1:
                                break
                            self._err_status(status, i, "CDATA section")
                    else:
                        self._err("not-well-formed", "control character in CDATA", i)
                if not closed:
                    break
                state = ST_CONTENT

            elif state == ST_PROLOG_START:
                r = self._prolog_start(p, n)
                if r < 0:
                    break
                i = r
                state = ST_PROLOG

            elif state == ST_PROLOG:
                while i < n and IS_WS[p[i]]:
                    i += 1
                if i >= n:
                    break
                c = p[i]
                if c != 60:
                    if c == 0xEF:
                        self._err("not-well-formed", "byte order mark before the stream header (RFC 6120 §11.6)", i)
                    self._err("not-well-formed", "text before the stream header", i)
                if i + 1 >= n:
                    break
                c = p[i + 1]
                if c == 33:
                    self._err("restricted-xml", "comment or DTD before the stream header", i)
                if c == 63:
                    self._err("restricted-xml", "processing instruction before the stream header", i)
                state = ST_LT

            elif state == ST_CLOSED:
                while i < n and IS_WS[p[i]]:
                    i += 1
                self._mark = i
                if i < n:
                    self._err("not-well-formed", "data after the end of the stream", i)
                break

            else:
                break

        self._pos = i
        self._state = state
        return 0

    cdef Py_ssize_t _scan_name(self, const unsigned char* p, Py_ssize_t i, Py_ssize_t n) except -0x7fffffffffff:
        """Scan name characters from i. Returns the index of the delimiter (>= 0), or
        -(i+1) when the data ends inside the name."""
        cdef unsigned char c
        cdef unsigned int cp = 0
        cdef Py_ssize_t r
        while True:
            while i < n and NAME_CHAR[p[i]]:
                i += 1
            if i >= n:
                return -(i + 1)
            c = p[i]
            if c == 58:       # ':'
                if self._name_colon >= 0 or i == self._name_start:
                    self._err("not-well-formed", "colon not allowed here in a name (Namespaces in XML)", i)
                self._name_colon = i
                i += 1
            elif c >= 0x80:
                r = _utf8(p, i, n, &cp)
                if r == NEED_MORE:
                    return -(i + 1)
                if r < 0:
                    self._err_unit(r, i, "a name")
                if i == self._name_start or i == self._name_colon + 1:
                    if not _is_name_start_cp(cp):
                        self._err("not-well-formed", "character not allowed at the start of a name", i)
                elif not _is_name_cp(cp):
                    self._err("not-well-formed", "character not allowed in a name", i)
                i += r
            else:
                if self._name_colon >= 0 and not (NAME_START[p[self._name_colon + 1]]
                                                   or p[self._name_colon + 1] >= 0x80):
                    self._err("not-well-formed", "bad or empty local name after a prefix", i)
                if i - self._name_start > self.max_name_bytes:
                    self._fail_limit(self._name_start + self.max_name_bytes, "name longer than max_name_bytes")
                return i

    cdef Py_ssize_t _markup_decl(self, const unsigned char* p, Py_ssize_t i, Py_ssize_t n) except -1:
        """'<!' at p[i]: CDATA opens (returns its length, 9), or an error. 0 = need more."""
        cdef const unsigned char* lit = <const unsigned char*>b"<![CDATA["
        cdef Py_ssize_t k
        cdef unsigned char c
        if i + 2 >= n:
            return 0
        c = p[i + 2]
        if c == 45:
            self._err("restricted-xml", "comment", i)
        if c != 91:
            if c == 68:
                self._err("restricted-xml", "DTD", i)
            self._err("not-well-formed", "'<!' not starting CDATA", i)
        for k in range(3, 9):
            if i + k >= n:
                return 0
            if p[i + k] != lit[k]:
                self._err("not-well-formed", "'<![' not starting CDATA", i)
        if self._depth < 2:
            self._err("bad-format", "CDATA between stanzas", i)
        return 9

    cdef Py_ssize_t _prolog_start(self, const unsigned char* p, Py_ssize_t n) except -2:
        """The first bytes of a stream: encoding sniffing and the optional XML declaration.
        Returns where the prolog continues, or -1 to wait for more bytes."""
        cdef Py_ssize_t k, end
        cdef const unsigned char* decl = <const unsigned char*>b"<?xml"
        if n == 0:
            return -1
        if p[0] == 0xFF or p[0] == 0xFE or p[0] == 0:
            self._err("unsupported-encoding", "stream is not UTF-8 (UTF-16?)", 0)
        if p[0] != 60:
            return 0
        if n >= 2 and p[1] == 0:
            self._err("unsupported-encoding", "stream is not UTF-8 (UTF-16?)", 0)
        for k in range(5):
            if k >= n:
                return -1
            if p[k] != decl[k]:
                return 0
        if n < 6:
            return -1
        if not IS_WS[p[5]]:
            return 0          # "<?xml-…": a processing instruction, refused in the prolog
        end = -1
        for k in range(6, min(n - 1, MAX_XMLDECL_BYTES)):
            if p[k] == 63 and p[k + 1] == 62:
                end = k + 2
                break
        if end < 0:
            if n < MAX_XMLDECL_BYTES:
                return -1
            self._err("not-well-formed", "XML declaration too long or unterminated", 0)
        text = PyBytes_FromStringAndSize(<const char*>p, end)
        m = _XMLDECL_RE.match(text)
        if m is None:
            self._err("not-well-formed", "malformed XML declaration", 0)
        enc = m.group(1) or m.group(2)
        if enc is not None and enc.lower() != b"utf-8":
            self._err("unsupported-encoding", "XML declaration names encoding " + enc.decode("ascii"), 0)
        return end

    # -- element events ----------------------------------------------------------------------

    cdef inline const unsigned char* _bind_prefix(self, const unsigned char* p, Binding* b) noexcept:
        return (b.prefix_base if b.prefix_kind else p) + b.prefix_off

    cdef inline const unsigned char* _bind_uri(self, const unsigned char* p, Binding* b) noexcept:
        return (b.uri_base if b.uri_kind else p) + b.uri_off

    cdef Binding* _lookup(self, const unsigned char* p, const unsigned char* prefix, Py_ssize_t plen) noexcept:
        cdef Py_ssize_t k = self._nbinds - 1
        cdef Binding* b
        while k >= 0:
            b = &self._binds[k]
            if b.prefix_len == plen and (plen == 0 or memcmp(self._bind_prefix(p, b), prefix, plen) == 0):
                return b
            k -= 1
        return NULL

    cdef int _push_binding(self, const unsigned char* p, Attr* a) except -1:
        cdef Binding* b
        cdef Py_ssize_t plen = a.name_len - 6 if a.colon >= 0 else 0
        cdef const unsigned char* uri
        cdef Py_ssize_t ulen
        cdef bytes decoded
        if self._nbinds >= self._cap_binds:
            self._cap_binds *= 2
            self._binds = <Binding*>realloc(self._binds, sizeof(Binding) * self._cap_binds)
            if self._binds == NULL:
                raise MemoryError()
        b = &self._binds[self._nbinds]
        b.prefix_kind = 0
        b.prefix_base = NULL
        b.prefix_off = a.name_off + 6 if a.colon >= 0 else a.name_off
        b.prefix_len = plen
        b.depth = self._depth + 1
        if a.amp:
            decoded = _decode_value(p + a.val_off, a.val_len).encode("utf-8")
            (self._hdr_keep if self._depth == 0 else self._keep).append(decoded)
            b.uri_kind = 1
            b.uri_base = <const unsigned char*>PyBytes_AS_STRING(decoded)
            b.uri_off = 0
            b.uri_len = PyBytes_GET_SIZE(decoded)
        else:
            b.uri_kind = 0
            b.uri_base = NULL
            b.uri_off = a.val_off
            b.uri_len = a.val_len
        uri = self._bind_uri(p, b)
        ulen = b.uri_len
        # Namespaces in XML 1.0 §3: reserved prefixes and names
        if plen == 3 and memcmp(p + b.prefix_off, b"xml", 3) == 0:
            if not (ulen == len(B_NS_XML) and memcmp(uri, <const char*>B_NS_XML, ulen) == 0):
                self._err("not-well-formed", "prefix 'xml' bound to another namespace", a.name_off)
            self._nbinds += 1
            return 0
        if plen == 5 and memcmp(p + b.prefix_off, b"xmlns", 5) == 0:
            self._err("not-well-formed", "prefix 'xmlns' must not be declared", a.name_off)
        if (ulen == len(B_NS_XML) and memcmp(uri, <const char*>B_NS_XML, ulen) == 0) or \
                (ulen == len(B_NS_XMLNS) and memcmp(uri, <const char*>B_NS_XMLNS, ulen) == 0):
            self._err("not-well-formed", "reserved namespace bound to another prefix", a.name_off)
        if plen > 0 and ulen == 0:
            self._err("not-well-formed", "a prefix cannot be undeclared in XML 1.0 (xmlns:p='')", a.name_off)
        self._nbinds += 1
        return 0

    cdef int _resolve(self, const unsigned char* p, Py_ssize_t name_off, Py_ssize_t colon,
                      const unsigned char** uri, Py_ssize_t* ulen) except -1:
        """Namespace of a prefixed name (colon >= 0)."""
        cdef Py_ssize_t plen = colon - name_off
        cdef Binding* b
        if plen == 3 and memcmp(p + name_off, b"xml", 3) == 0:
            uri[0] = <const unsigned char*>PyBytes_AS_STRING(B_NS_XML)
            ulen[0] = len(B_NS_XML)
            return 0
        if plen == 5 and memcmp(p + name_off, b"xmlns", 5) == 0:
            self._err("not-well-formed", "prefix 'xmlns' used on an element", name_off)
        b = self._lookup(p, p + name_off, plen)
        if b == NULL:
            self._err("not-well-formed", "unbound namespace prefix", name_off)
        uri[0] = self._bind_uri(p, b)
        ulen[0] = b.uri_len
        return 0

    cdef State _start_element(self, const unsigned char* p, Py_ssize_t end, bint empty) except ST_FAILED:
        cdef Py_ssize_t k, m
        cdef Attr* a
        cdef Attr* o
        cdef Py_ssize_t nbind_before = self._nbinds
        cdef Py_ssize_t name_off = self._tag_start + 1
        cdef Py_ssize_t name_colon = self._el_colon
        cdef Py_ssize_t name_len
        cdef const unsigned char* uri
        cdef Py_ssize_t ulen
        cdef const unsigned char* uri2
        cdef Py_ssize_t ulen2
        cdef Binding* b
        cdef Open* e
        name_len = self._el_name_end - name_off
        # namespace declarations first (they apply to the element's own name and attributes)
        for k in range(self._nattrs):
            a = &self._attrs[k]
            if a.name_len >= 5 and memcmp(p + a.name_off, b"xmlns", 5) == 0 and \
                    (a.name_len == 5 or a.colon == a.name_off + 5):
                self._push_binding(p, a)
        # unique attributes: by qualified name, then by expanded name (Namespaces §6.3)
        for k in range(self._nattrs):
            a = &self._attrs[k]
            for m in range(k):
                o = &self._attrs[m]
                if o.name_len == a.name_len and p[o.name_off] == p[a.name_off] and \
                        memcmp(p + o.name_off, p + a.name_off, a.name_len) == 0:
                    self._err("not-well-formed", "duplicate attribute", a.name_off)
        for k in range(self._nattrs):
            a = &self._attrs[k]
            if a.colon < 0 or (a.colon == a.name_off + 5 and memcmp(p + a.name_off, b"xmlns", 5) == 0):
                continue
            self._resolve(p, a.name_off, a.colon, &uri2, &ulen2)
            for m in range(k):
                o = &self._attrs[m]
                if o.colon < 0 or (o.colon == o.name_off + 5 and memcmp(p + o.name_off, b"xmlns", 5) == 0):
                    continue
                if (o.name_len - (o.colon - o.name_off)) != (a.name_len - (a.colon - a.name_off)):
                    continue
                if memcmp(p + o.colon, p + a.colon, a.name_len - (a.colon - a.name_off)) != 0:
                    continue
                self._resolve(p, o.name_off, o.colon, &uri, &ulen)
                if ulen == ulen2 and memcmp(uri, uri2, ulen) == 0:
                    self._err("not-well-formed", "duplicate attribute after namespace expansion", a.name_off)
        # the element's own namespace
        if name_colon >= 0:
            self._resolve(p, name_off, name_colon, &uri, &ulen)
        else:
            b = self._lookup(p, NULL, 0)
            uri = NULL if b == NULL else self._bind_uri(p, b)
            ulen = 0 if b == NULL else b.uri_len
        # push
        e = &self._stack[self._depth]
        e.name_base = NULL
        e.name_kind = 0
        e.name_off = name_off
        e.name_len = name_len
        e.nbind = nbind_before
        if self._depth == 0:
            self._stream_header(p, end, name_off, name_len, name_colon, uri, ulen)
        elif self._depth == 1:
            self._stanza_start(p, name_off, name_len, name_colon, uri, ulen)
        self._depth += 1
        self._nattrs = 0
        if empty:
            return self._pop(p, end)
        return ST_CONTENT

    cdef int _stream_header(self, const unsigned char* p, Py_ssize_t end, Py_ssize_t name_off,
                            Py_ssize_t name_len, Py_ssize_t name_colon,
                            const unsigned char* uri, Py_ssize_t ulen) except -1:
        cdef Py_ssize_t k
        cdef Py_ssize_t t0 = self._tag_start
        cdef Attr* a
        cdef Binding* b
        cdef Py_ssize_t local_off = name_colon + 1 if name_colon >= 0 else name_off
        # a header that arrived whole in one feed() is held to the same limit as one that
        # arrived in pieces (feed() checks only what is still open; found by fuzzing)
        if end - self._mark > self.max_stanza_bytes:
            self._fail_limit(self._mark + self.max_stanza_bytes, "stream header larger than max_stanza_bytes")
        if not (ulen == len(B_NS_STREAMS) and memcmp(uri, <const char*>B_NS_STREAMS, ulen) == 0):
            self._err("invalid-namespace", "the stream header is not in the streams namespace", name_off)
        if not (name_off + name_len - local_off == 6 and memcmp(p + local_off, b"stream", 6) == 0):
            self._err("invalid-namespace", "the root element is not <stream>", name_off)
        raw = PyBytes_FromStringAndSize(<const char*>p + t0, end - t0)
        self._hdr_raw = raw
        hdr = <const unsigned char*>PyBytes_AS_STRING(raw)
        # re-point the stream-level bindings into the kept header bytes
        for k in range(self._nbinds):
            b = &self._binds[k]
            if b.prefix_kind == 0:
                b.prefix_kind = 1
                b.prefix_base = hdr
                b.prefix_off -= t0
            if b.uri_kind == 0:
                b.uri_kind = 1
                b.uri_base = hdr
                b.uri_off -= t0
        e = &self._stack[0]
        e.name_kind = 1
        e.name_base = hdr
        e.name_off = name_off - t0
        scope = {"xml": NS_XML}
        for k in range(self._nbinds):
            b = &self._binds[k]
            scope[PyUnicode_DecodeUTF8(<const char*>b.prefix_base + b.prefix_off, b.prefix_len, NULL)] = \
                PyUnicode_DecodeUTF8(<const char*>b.uri_base + b.uri_off, b.uri_len, NULL)
        attrs = {}
        cdef const unsigned char* auri
        cdef Py_ssize_t aulen
        for k in range(self._nattrs):
            a = &self._attrs[k]
            if a.name_len >= 5 and memcmp(p + a.name_off, b"xmlns", 5) == 0 and \
                    (a.name_len == 5 or a.colon == a.name_off + 5):
                continue
            if a.amp:
                value = _decode_value(p + a.val_off, a.val_len)
            else:
                value = PyUnicode_DecodeUTF8(<const char*>p + a.val_off, a.val_len, NULL)
            if a.colon >= 0:
                self._resolve(p, a.name_off, a.colon, &auri, &aulen)
                key = "{" + PyUnicode_DecodeUTF8(<const char*>auri, aulen, NULL) + "}" + \
                    PyUnicode_DecodeUTF8(<const char*>p + a.colon + 1, a.name_off + a.name_len - a.colon - 1, NULL)
            else:
                key = PyUnicode_DecodeUTF8(<const char*>p + a.name_off, a.name_len, NULL)
            attrs[key] = value
        cdef StreamOpen so = StreamOpen.__new__(StreamOpen)
        so.raw = raw
        so.qname = PyUnicode_DecodeUTF8(<const char*>p + name_off, name_len, NULL)
        so.name = "stream"
        so.namespace = NS_STREAMS
        so.attrs = attrs
        so.namespaces = {k2: v for k2, v in scope.items() if k2 != "xml"}
        self._scope = scope
        self._hdr_default_ns = scope.get("")
        self._open = so
        self._out.append(so)
        return 0

    cdef int _stanza_start(self, const unsigned char* p, Py_ssize_t name_off, Py_ssize_t name_len,
                           Py_ssize_t name_colon, const unsigned char* uri, Py_ssize_t ulen) except -1:
        cdef Py_ssize_t k
        cdef Attr* a
        cdef Py_ssize_t m = self._mark
        cdef Binding* b
        if name_colon >= 0:
            self._st_name_off = name_colon + 1 - m
            self._st_name_len = name_off + name_len - name_colon - 1
        else:
            self._st_name_off = name_off - m
            self._st_name_len = name_len
        # the namespace as a str: reuse the stream header's when it comes from there
        self._st_ns = None
        if name_colon < 0:
            b = self._lookup(p, NULL, 0)
            if b != NULL and b.depth == 1:
                self._st_ns = self._hdr_default_ns
        else:
            b = self._lookup(p, p + name_off, name_colon - name_off)
            if b != NULL and b.depth == 1:
                self._st_ns = self._scope.get(
                    PyUnicode_DecodeUTF8(<const char*>p + name_off, name_colon - name_off, NULL))
        if self._st_ns is None:
            self._st_ns = "" if uri == NULL else PyUnicode_DecodeUTF8(<const char*>uri, ulen, NULL)
        # restart points: TLS <starttls/> / <proceed/>, SASL <success/>
        cdef const char* local = <const char*>p + self._mark + self._st_name_off
        self._st_restart = (
            (ulen == 31 and memcmp(uri, b"urn:ietf:params:xml:ns:xmpp-tls", 31) == 0 and (
                (self._st_name_len == 7 and memcmp(local, b"proceed", 7) == 0)
                or (self._st_name_len == 8 and memcmp(local, b"starttls", 8) == 0)))
            or (ulen == 32 and memcmp(uri, b"urn:ietf:params:xml:ns:xmpp-sasl", 32) == 0
                and self._st_name_len == 7 and memcmp(local, b"success", 7) == 0))
        self._st_to_off = self._st_from_off = self._st_type_off = self._st_id_off = -1
        self._st_to_len = self._st_from_len = self._st_type_len = self._st_id_len = 0
        self._st_amp = 0
        for k in range(self._nattrs):
            a = &self._attrs[k]
            if a.colon >= 0:
                continue
            if a.name_len == 2 and p[a.name_off] == 116 and p[a.name_off + 1] == 111:
                self._st_to_off = a.val_off - m
                self._st_to_len = a.val_len
                self._st_amp |= a.amp
            elif a.name_len == 4 and memcmp(p + a.name_off, b"from", 4) == 0:
                self._st_from_off = a.val_off - m
                self._st_from_len = a.val_len
                self._st_amp |= a.amp << 1
            elif a.name_len == 4 and memcmp(p + a.name_off, b"type", 4) == 0:
                self._st_type_off = a.val_off - m
                self._st_type_len = a.val_len
                self._st_amp |= a.amp << 2
            elif a.name_len == 2 and p[a.name_off] == 105 and p[a.name_off + 1] == 100:
                self._st_id_off = a.val_off - m
                self._st_id_len = a.val_len
                self._st_amp |= a.amp << 3
        return 0

    cdef int _end_name(self, const unsigned char* p, Py_ssize_t i) except -1:
        """Check that the end tag's name (from _name_start to i) matches the open element."""
        cdef Open* e
        if self._depth == 0:
            self._err("not-well-formed", "end tag without a start tag", self._tag_start)
        e = &self._stack[self._depth - 1]
        if i - self._name_start != e.name_len or memcmp(
                p + self._name_start, (e.name_base if e.name_kind else p) + e.name_off, e.name_len) != 0:
            if self._closes_ancestor(p, i):
                # RFC 6120 §4.9.3.1's own example of <bad-format/>: an element left unclosed
                self._err("bad-format", "end tag closes an outer element: an inner one was left open",
                          self._tag_start)
            self._err("not-well-formed", "end tag does not match the start tag", self._tag_start)
        return 0

    cdef bint _closes_ancestor(self, const unsigned char* p, Py_ssize_t i) noexcept:
        cdef Py_ssize_t k
        cdef Open* e
        for k in range(self._depth - 1):
            e = &self._stack[k]
            if i - self._name_start == e.name_len and memcmp(
                    p + self._name_start, (e.name_base if e.name_kind else p) + e.name_off, e.name_len) == 0:
                return True
        return False

    cdef State _end_element(self, const unsigned char* p, Py_ssize_t end) except ST_FAILED:
        return self._pop(p, end)

    cdef State _pop(self, const unsigned char* p, Py_ssize_t end) except ST_FAILED:
        cdef Open* e
        self._depth -= 1
        e = &self._stack[self._depth]
        self._nbinds = e.nbind
        if self._depth == 1:
            if end - self._mark > self.max_stanza_bytes:
                self._fail_limit(self._mark + self.max_stanza_bytes, "stanza larger than max_stanza_bytes")
            return self._emit_stanza(p, end)
        if self._depth == 0:
            sc = _make_close(PyBytes_FromStringAndSize(<const char*>p + self._tag_start, end - self._tag_start))
            self._out.append(sc)
            self._mark = end
            return ST_CLOSED
        return ST_CONTENT

    cdef State _emit_stanza(self, const unsigned char* p, Py_ssize_t end) except ST_FAILED:
        cdef Stanza st = Stanza.__new__(Stanza)
        st.raw = PyBytes_FromStringAndSize(<const char*>p + self._mark, end - self._mark)
        st._ns = self._st_ns
        st._scope = self._scope
        st._name_off = self._st_name_off
        st._name_len = self._st_name_len
        st._to_off = self._st_to_off
        st._to_len = self._st_to_len
        st._from_off = self._st_from_off
        st._from_len = self._st_from_len
        st._type_off = self._st_type_off
        st._type_len = self._st_type_len
        st._id_off = self._st_id_off
        st._id_len = self._st_id_len
        st._amp = self._st_amp
        self._out.append(st)
        self._mark = end
        if self._keep:
            self._keep = []
        # restart points (RFC 6120 §5.4.3.3, §6.4.6): nothing may follow on this stream
        if self._st_restart:
            return ST_HALTED
        return ST_CONTENT


# ---------------------------------------------------------------------------------------------
# decoding helpers (text and attribute values of validated bytes)
# ---------------------------------------------------------------------------------------------

cdef Py_ssize_t _put_utf8(unsigned char* out, Py_ssize_t o, unsigned int cp) noexcept nogil:
    if cp < 0x80:
        out[o] = cp
        return o + 1
    if cp < 0x800:
        out[o] = 0xC0 | (cp >> 6)
        out[o + 1] = 0x80 | (cp & 0x3F)
        return o + 2
    if cp < 0x10000:
        out[o] = 0xE0 | (cp >> 12)
        out[o + 1] = 0x80 | ((cp >> 6) & 0x3F)
        out[o + 2] = 0x80 | (cp & 0x3F)
        return o + 3
    out[o] = 0xF0 | (cp >> 18)
    out[o + 1] = 0x80 | ((cp >> 12) & 0x3F)
    out[o + 2] = 0x80 | ((cp >> 6) & 0x3F)
    out[o + 3] = 0x80 | (cp & 0x3F)
    return o + 4


cdef str _decode(const unsigned char* s, Py_ssize_t n, bint attr):
    """Decode validated text (attr=False) or an attribute value (attr=True): references
    replaced, line ends normalised (XML 1.0 §2.11) and, in values, whitespace normalised
    (§3.3.3: each raw TAB, LF, CR or CRLF becomes one space)."""
    cdef Py_ssize_t k
    cdef bint plain = True
    for k in range(n):
        if s[k] == 38 or s[k] == 13 or (attr and (s[k] == 9 or s[k] == 10)):
            plain = False
            break
    if plain:
        return _str(<const char*>s, n)
    cdef unsigned char* out = <unsigned char*>malloc(n + 1)
    cdef Py_ssize_t o = 0
    cdef Py_ssize_t r
    cdef unsigned int cp = 0
    cdef unsigned char c
    if out == NULL:
        raise MemoryError()
    k = 0
    try:
        while k < n:
            c = s[k]
            if c == 38:
                r = _reference(s, k, n, &cp)
                o = _put_utf8(out, o, cp)
                k += r
            elif c == 13:
                out[o] = 32 if attr else 10
                o += 1
                k += 1
                if k < n and s[k] == 10:
                    k += 1
            elif attr and (c == 9 or c == 10):
                out[o] = 32
                o += 1
                k += 1
            else:
                out[o] = c
                o += 1
                k += 1
        return PyUnicode_DecodeUTF8(<const char*>out, o, NULL)
    finally:
        free(out)


cdef str _decode_value(const unsigned char* s, Py_ssize_t n):
    return _decode(s, n, True)


# ---------------------------------------------------------------------------------------------
# element tree
# ---------------------------------------------------------------------------------------------

cdef class Element:
    """An XML element: expanded name, attributes and mixed content (see the stub)."""

    cdef public str name
    cdef public str namespace
    cdef public dict attrs
    cdef public list children

    def __init__(self, str name, str namespace="", attrs=None, children=None):
        self.name = name
        self.namespace = namespace
        self.attrs = {} if attrs is None else dict(attrs)
        self.children = [] if children is None else list(children)

    @property
    def tag(self):
        return "{" + self.namespace + "}" + self.name if self.namespace else self.name

    @property
    def text(self):
        """The element's own character data (child elements' text excluded)."""
        return "".join([c for c in self.children if type(c) is str])

    def get(self, key, default=None):
        return self.attrs.get(key, default)

    def elements(self):
        return [c for c in self.children if type(c) is Element]

    def find(self, name, namespace=None):
        for c in self.children:
            if type(c) is Element and (<Element>c).name == name and (
                    namespace is None or (<Element>c).namespace == namespace):
                return c
        return None

    def findall(self, name, namespace=None):
        return [c for c in self.children if type(c) is Element and (<Element>c).name == name
                and (namespace is None or (<Element>c).namespace == namespace)]

    def append(self, child):
        """Add a child element or text (merged with a preceding text node)."""
        if type(child) is str:
            if not child:
                return
            _append_text(self, child)
            return
        elif not isinstance(child, Element):
            raise TypeError("children are Element or str")
        self.children.append(child)

    def __eq__(self, other):
        if not isinstance(other, Element):
            return NotImplemented
        cdef Element o = <Element>other
        return (self.name == o.name and self.namespace == o.namespace and self.attrs == o.attrs
                and self.children == o.children)

    __hash__ = None

    def __repr__(self):
        return f"Element({self.name!r}, {self.namespace!r}, attrs={self.attrs!r}, children={self.children!r})"


cdef inline Py_ssize_t _skip_ws(const unsigned char* p, Py_ssize_t i) noexcept nogil:
    while IS_WS[p[i]]:
        i += 1
    return i


cdef inline Py_ssize_t _name_end(const unsigned char* p, Py_ssize_t i) noexcept nogil:
    while not (IS_WS[p[i]] or p[i] == 61 or p[i] == 62 or p[i] == 47):
        i += 1
    return i


cdef object _build_tree(bytes raw, dict stream_scope):
    """Build the Element tree of one validated stanza (iterative: no recursion per level)."""
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(raw)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(raw)
    cdef Py_ssize_t i = 0, j, k, ns, ne, vs, ve
    cdef Py_ssize_t colon
    cdef unsigned char q
    cdef Element cur = None
    cdef Element el
    cdef Element root = None
    cdef list stack = []          # (element, scope) of the open ancestors
    cdef dict scope = stream_scope
    cdef list pending
    cdef list children
    cdef const unsigned char* hit
    while i < n:
        if p[i] == 60:
            if p[i + 1] == 47:                     # end tag
                hit = <const unsigned char*>memchr(p + i, 62, n - i)
                i = (hit - p) + 1
                if stack:
                    cur, scope = stack.pop()
                else:
                    cur = None
                continue
            if p[i + 1] == 33:                     # CDATA section
                j = i + 9
                k = j
                while not (p[k] == 93 and p[k + 1] == 93 and p[k + 2] == 62):
                    k += 1
                _append_text(cur, _decode_cdata(p + j, k - j))
                i = k + 3
                continue
            # start tag
            ns = i + 1
            ne = _name_end(p, ns)
            i = ne
            pending = None        # prefixed attributes, resolved once all declarations are read
            decls = None
            attrs = {}
            while True:
                i = _skip_ws(p, i)
                if p[i] == 62 or p[i] == 47:
                    break
                j = _name_end(p, i)
                k = _skip_ws(p, j) + 1                # past '='
                k = _skip_ws(p, k)
                q = p[k]
                vs = k + 1
                hit = <const unsigned char*>memchr(p + vs, q, n - vs)
                ve = hit - p
                value = _decode(p + vs, ve - vs, True)
                hit = <const unsigned char*>memchr(p + i, 58, j - i)
                if j - i >= 5 and memcmp(p + i, b"xmlns", 5) == 0 and (j - i == 5 or p[i + 5] == 58):
                    if decls is None:
                        decls = {}
                    decls["" if j - i == 5 else _name(p + i + 6, j - i - 6)] = value
                elif hit == NULL:
                    attrs[_name(p + i, j - i)] = value
                else:
                    if pending is None:
                        pending = []
                    pending.append((i, j, value))
                i = ve + 1
            empty = p[i] == 47
            i += 2 if empty else 1
            outer = scope
            if decls is not None:
                scope = dict(scope)
                scope.update(decls)
            hit = <const unsigned char*>memchr(p + ns, 58, ne - ns)
            if hit != NULL:
                colon = hit - p
                nsname = scope[_name(p + ns, colon - ns)]
                local = _name(p + colon + 1, ne - colon - 1)
            else:
                nsname = scope.get("", "")
                local = _name(p + ns, ne - ns)
            el = Element.__new__(Element)
            el.name = local
            el.namespace = nsname
            el.children = []
            if pending is not None:
                for (j, k, value) in pending:
                    colon = (<const unsigned char*>memchr(p + j, 58, k - j)) - p
                    attrs["{" + scope[_name(p + j, colon - j)] + "}" + _name(p + colon + 1, k - colon - 1)] = value
            el.attrs = attrs
            if cur is None:
                root = el
            else:
                cur.children.append(el)
            if empty:
                scope = outer
            else:
                stack.append((cur, outer))
                cur = el
            continue
        # character data
        hit = <const unsigned char*>memchr(p + i, 60, n - i)
        j = n if hit == NULL else hit - p
        if cur is not None:
            _append_text(cur, _decode(p + i, j - i, False))
        i = j
    return root


cdef int _append_text(Element cur, str text) except -1:
    if cur is None or not text:
        return 0
    cdef list ch = cur.children
    cdef Py_ssize_t last = len(ch) - 1
    if last >= 0 and type(ch[last]) is str:
        ch[last] = ch[last] + text
    else:
        ch.append(text)
    return 0


cdef str _decode_cdata(const unsigned char* s, Py_ssize_t n):
    cdef Py_ssize_t k
    for k in range(n):
        if s[k] == 13:
            return PyUnicode_DecodeUTF8(<const char*>s, n, NULL).replace("\r\n", "\n").replace("\r", "\n")
    return PyUnicode_DecodeUTF8(<const char*>s, n, NULL)
