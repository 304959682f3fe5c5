"""edgeproxy: an XMPP federation edge (S2S proxy, policy engine, XMPP-SIP gateway)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("edgeproxy")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
