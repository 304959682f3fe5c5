"""What Python's ``ssl`` does not expose, reached in OpenSSL through ctypes: a verify callback that
accepts every certificate, and the certificate chain a peer sent.

Deferring the verification also replaces OpenSSL's chain building on that context
(``SSL_CTX_set_cert_verify_callback``, a callback returning 1): its result would be thrown away by
the accept-any verify callback anyway, and what it builds stays with the connection for its life
(the verified chain, the extensions it decoded on the peer's certificates): 0.5 KiB per idle
connection with a one-name certificate and its CA, 10.8 KiB with one naming 100 domains
(``bench/probe_tls_memory.py --skip-openssl-verify``). The handshake still checks that the peer
holds the certificate's key (CertificateVerify), which is separate from chain building; the
verdict on the certificate is :mod:`edgeproxy.certs.peer`'s, as before.

Theory of operation
-------------------
The functions are looked up in the library CPython's ``_ssl`` is linked with (``dlsym`` searches
its dependencies). The ``SSL_CTX *`` of an :class:`ssl.SSLContext` is the first field after the
object header of ``_ssl._SSLContext``; before anything is written through it, two fields are read
back (verify mode, options) and compared with what Python reports, so that a different object
layout makes :func:`defer_verification` decline (False) rather than write to the wrong place.

:func:`peer_chain` reads the ``SSL *`` of a ``_ssl._SSLSocket`` (``PySSLSocket``: header, socket
weakref, ``SSL *ssl``, ``ctx``) the same checked way; Python ≥ 3.13 has
``SSLObject.get_unverified_chain`` and needs none of it. Why S2S needs both is in
:mod:`edgeproxy.certs.contexts` (the deferred verification) and :mod:`edgeproxy.certs.peer` (the
intermediates of the chain).
"""

from __future__ import annotations

import ctypes
import functools
import ssl
from typing import Any

#: OpenSSL's SSL_VERIFY_PEER: request (server) / require (client) the peer's certificate.
_SSL_VERIFY_PEER = 1
_VERIFY_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_void_p)
#: Kept alive for the life of the process: OpenSSL holds the function pointer.
_ACCEPT_ANY = _VERIFY_CALLBACK(lambda _preverify_ok, _store: 1)
_CERT_VERIFY_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)
#: Kept alive likewise: "the chain is acceptable" without building it (the verdict is ours).
_NO_CHAIN_BUILDING = _CERT_VERIFY_CALLBACK(lambda _store_ctx, _arg: 1)


@functools.cache
def _libssl() -> ctypes.CDLL | None:
    """The OpenSSL functions CPython's ``_ssl`` is linked with (dlsym searches its dependencies)."""
    try:
        import _ssl

        lib = ctypes.CDLL(_ssl.__file__)
        signatures: dict[str, tuple[Any, list[Any]]] = {
            "SSL_CTX_get_verify_mode": (ctypes.c_int, [ctypes.c_void_p]),
            "SSL_CTX_get_options": (ctypes.c_uint64, [ctypes.c_void_p]),
            "SSL_CTX_set_verify": (None, [ctypes.c_void_p, ctypes.c_int, _VERIFY_CALLBACK]),
            "SSL_CTX_set_cert_verify_callback": (None, [ctypes.c_void_p, _CERT_VERIFY_CALLBACK, ctypes.c_void_p]),
            "SSL_get_SSL_CTX": (ctypes.c_void_p, [ctypes.c_void_p]),
            "SSL_get_peer_cert_chain": (ctypes.c_void_p, [ctypes.c_void_p]),
            "OPENSSL_sk_num": (ctypes.c_int, [ctypes.c_void_p]),
            "OPENSSL_sk_value": (ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_int]),
            "OPENSSL_sk_pop": (ctypes.c_void_p, [ctypes.c_void_p]),
            "X509_free": (None, [ctypes.c_void_p]),
            "i2d_X509": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_void_p]),
        }
        for name, (restype, argtypes) in signatures.items():
            function = getattr(lib, name)
            function.restype, function.argtypes = restype, argtypes
    except (AttributeError, OSError, ImportError):
        return None
    return lib


def _field(obj: object, index: int) -> int | None:
    """The ``index``-th pointer field after the object header of a CPython object."""
    return ctypes.c_void_p.from_address(id(obj) + object.__basicsize__ + index * ctypes.sizeof(ctypes.c_void_p)).value


def _ssl_ctx_pointer(ctx: ssl.SSLContext) -> int | None:
    """The ``SSL_CTX *`` of ``ctx`` (CPython ``PySSLContext.ctx``), or None if not verifiable."""
    lib = _libssl()
    if lib is None:
        return None
    pointer = _field(ctx, 0)
    if not pointer:
        return None
    # Read back two fields through the pointer: if they are not what Python reports, the
    # object layout is not the one we expect and we must not write through it.
    expected_mode = {ssl.CERT_NONE: 0, ssl.CERT_OPTIONAL: 1, ssl.CERT_REQUIRED: 3}[ctx.verify_mode]
    if lib.SSL_CTX_get_verify_mode(pointer) != expected_mode or lib.SSL_CTX_get_options(pointer) != int(ctx.options):
        return None
    return pointer


def defer_verification(ctx: ssl.SSLContext) -> bool:
    """Request the peer certificate but accept any (a verify callback returning 1, and no chain
    building: see the module docstring); True if done."""
    pointer = _ssl_ctx_pointer(ctx)
    lib = _libssl()
    if pointer is None or lib is None:
        return False
    lib.SSL_CTX_set_verify(pointer, _SSL_VERIFY_PEER, _ACCEPT_ANY)
    lib.SSL_CTX_set_cert_verify_callback(pointer, _NO_CHAIN_BUILDING, None)
    return ctx.verify_mode is ssl.CERT_OPTIONAL


def _peer_chain_stack(tls: Any) -> int | None:
    """The ``STACK_OF(X509) *`` of the chain the peer of ``tls`` sent (``SSL_get_peer_cert_chain``
    on the ``SSL *`` read from the ``_ssl._SSLSocket`` of a ``trio.SSLStream`` or a
    :class:`~edgeproxy.certs.socket_tls.SocketTlsStream``), accepted only if that ``SSL *`` belongs
    to the stream's context (``SSL_get_SSL_CTX`` and the ``ctx`` field both match), so a different
    object layout yields None rather than a wrong read."""
    lib, inner = _libssl(), getattr(getattr(tls, "_ssl_object", None), "_sslobj", None)
    ctx_pointer = _ssl_ctx_pointer(tls.context) if lib is not None else None
    if lib is None or inner is None or ctx_pointer is None:
        return None
    ssl_pointer, context_field = _field(inner, 1), _field(inner, 2)
    if not ssl_pointer or context_field != id(tls.context) or lib.SSL_get_SSL_CTX(ssl_pointer) != ctx_pointer:
        return None
    return lib.SSL_get_peer_cert_chain(ssl_pointer) or None


def peer_chain(tls: Any) -> list[bytes]:
    """DER of every certificate the peer of ``tls`` (a ``trio.SSLStream`` or a ``SocketTlsStream``)
    sent, or [] if unknown. (As a TLS server OpenSSL leaves the peer's leaf out of it.)

    Python 3.13 has ``SSLObject.get_unverified_chain``; on 3.11 it is read from OpenSSL
    (:func:`_peer_chain_stack`).
    """
    ssl_object = getattr(tls, "_ssl_object", None)
    unverified = getattr(ssl_object, "get_unverified_chain", None)
    if unverified is not None:
        return [c for c in unverified() or [] if isinstance(c, bytes)]
    lib, stack = _libssl(), _peer_chain_stack(tls)
    if lib is None or stack is None:
        return []
    chain: list[bytes] = []
    for n in range(lib.OPENSSL_sk_num(stack)):
        x509_pointer = lib.OPENSSL_sk_value(stack, n)
        size = lib.i2d_X509(x509_pointer, None)
        if size <= 0:
            return []
        buffer = ctypes.create_string_buffer(size)
        cursor = ctypes.c_void_p(ctypes.addressof(buffer))
        lib.i2d_X509(x509_pointer, ctypes.byref(cursor))
        chain.append(buffer.raw)
    return chain


def release_peer_chain(tls: Any) -> int:
    """Let OpenSSL free the chain the peer of ``tls`` sent, once it has been judged: it would keep
    it for the connection's life (a CA or intermediate sent with the leaf costs an idle stream
    ~4 KiB), and nothing reads it again. The stack is emptied, each certificate released by
    reference (``X509_free``: one the session still refers to — its leaf, ``SSL_get_peer_certificate``
    — stays). Returns how many were released (0 when the chain cannot be reached safely)."""
    lib, stack = _libssl(), _peer_chain_stack(tls)
    if lib is None or stack is None:
        return 0
    released = 0
    while lib.OPENSSL_sk_num(stack) > 0:
        lib.X509_free(lib.OPENSSL_sk_pop(stack))
        released += 1
    return released
