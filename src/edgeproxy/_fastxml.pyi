# Hand-written stub for the compiled tokenizer. Import it only through edgeproxy.tokenizer.
from typing import Final

DEFAULT_MAX_STANZA_BYTES: Final[int]
DEFAULT_MAX_DEPTH: Final[int]
DEFAULT_MAX_ATTRIBUTES: Final[int]
DEFAULT_MAX_NAME_BYTES: Final[int]
#: How this module was compiled (Cython version, compiler, flags, SIMD): `edgeproxy --version`.
BUILD_INFO: Final[dict[str, object]]

class TokenizerError(Exception):
    """Raised by Tokenizer.feed; the stream must be closed with <condition/>."""

    condition: str
    offset: int
    tokens: list[StreamOpen | Stanza | StreamClose]
    def __init__(
        self,
        message: str,
        condition: str,
        offset: int,
        tokens: list[StreamOpen | Stanza | StreamClose] | None = None,
    ) -> None: ...

class Element:
    """A parsed XML element: expanded name, attributes, and mixed content.

    Attribute keys are the local name for unprefixed attributes and "{namespace}local" for
    namespaced ones (e.g. "{http://www.w3.org/XML/1998/namespace}lang"). ``children`` holds
    Elements and str text nodes in document order (adjacent text merged).
    """

    name: str
    namespace: str
    attrs: dict[str, str]
    children: list[Element | str]
    def __init__(
        self,
        name: str,
        namespace: str = "",
        attrs: dict[str, str] | None = None,
        children: list[Element | str] | None = None,
    ) -> None: ...
    @property
    def tag(self) -> str: ...
    @property
    def text(self) -> str: ...
    def get(self, key: str, default: str | None = None) -> str | None: ...
    def elements(self) -> list[Element]: ...
    def find(self, name: str, namespace: str | None = None) -> Element | None: ...
    def findall(self, name: str, namespace: str | None = None) -> list[Element]: ...
    def append(self, child: Element | str) -> None: ...

class StreamOpen:
    qname: str
    name: str
    namespace: str
    attrs: dict[str, str]
    namespaces: dict[str, str]
    raw: bytes
    @property
    def to(self) -> str | None: ...
    @property
    def from_(self) -> str | None: ...
    @property
    def id(self) -> str | None: ...
    @property
    def version(self) -> str | None: ...
    @property
    def lang(self) -> str | None: ...
    @property
    def default_namespace(self) -> str: ...

class Stanza:
    raw: bytes
    @property
    def name(self) -> str: ...
    @property
    def namespace(self) -> str: ...
    @property
    def to(self) -> str | None: ...
    @property
    def from_(self) -> str | None: ...
    @property
    def type(self) -> str | None: ...
    @property
    def id(self) -> str | None: ...
    def element(self) -> Element: ...

class StreamClose:
    raw: bytes

Token = StreamOpen | Stanza | StreamClose

class Tokenizer:
    max_stanza_bytes: int
    max_depth: int
    max_attributes: int
    max_name_bytes: int
    def __init__(
        self,
        *,
        max_stanza_bytes: int = ...,
        max_depth: int = ...,
        max_attributes: int = ...,
        max_name_bytes: int = ...,
    ) -> None: ...
    def feed(self, data: bytes) -> list[Token]: ...
    def reset(self) -> None: ...
    @property
    def halted(self) -> bool: ...
    @property
    def trailing_bytes(self) -> bytes: ...
    @property
    def stream_open(self) -> StreamOpen | None: ...
    @property
    def closed(self) -> bool: ...
    @property
    def whitespace_bytes(self) -> int: ...
    @property
    def bytes_fed(self) -> int: ...
    @property
    def scanned_bytes(self) -> int: ...
    @property
    def buffered_bytes(self) -> int: ...
    @property
    def depth(self) -> int: ...
