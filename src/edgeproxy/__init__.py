"""edgeproxy: an XMPP federation edge (S2S proxy, policy engine, XMPP-SIP gateway).

``__version__`` below is the one place the version is written: the packaging metadata reads it
from here (``pyproject.toml``: ``dynamic = ["version"]``), and so do ``edgeproxy --version``, the
status, the metrics and the Control Panel, in a virtualenv, a wheel or the one-file executable.
"""

import sys

__version__ = "0.1.0"

__all__ = ["__version__", "tokenizer_build", "version_text"]


def tokenizer_build() -> str:
    """How the compiled tokenizer was built, for ``--version``: its Cython version, compiler,
    optimisation and the SIMD instruction sets it was compiled for (e.g. ``SSE2``)."""
    try:
        from edgeproxy.tokenizer import Tokenizer
    except ImportError:  # a source tree where `make build` has not run yet
        return "tokenizer not built"
    # The compiled module's BUILD_INFO, reached through the tokenizer module (its only importer).
    info = getattr(sys.modules.get(Tokenizer.__module__), "BUILD_INFO", None)
    if not isinstance(info, dict):
        return "tokenizer build flags unknown"
    simd = ", ".join(info.get("simd") or ["no SIMD"])
    compiler = f"{info.get('compiler', '?')} {info.get('cflags', '')}".rstrip()
    return f"tokenizer compiled with Cython {info.get('cython', '?')} by {compiler}, {simd}"


def version_text() -> str:
    """The line ``edgeproxy --version`` prints: the version and the tokenizer's build flags."""
    return f"edgeproxy {__version__} ({tokenizer_build()})"


def __getattr__(name: str) -> object:
    """``edgeproxy.run``, the embedding API (``docs/embedding.md``), imported on first use only:
    ``import edgeproxy`` loads neither trio nor the server (the one upward import the layering
    test allows)."""
    if name == "run":
        from edgeproxy.embed import run

        return run
    raise AttributeError(f"module 'edgeproxy' has no attribute {name!r}")
