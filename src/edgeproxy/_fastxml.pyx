# placeholder while the tokenizer is written; replaced in the next commit
DEFAULT_MAX_STANZA_BYTES = 262144
DEFAULT_MAX_DEPTH = 64
DEFAULT_MAX_ATTRIBUTES = 64
DEFAULT_MAX_NAME_BYTES = 1024
class TokenizerError(Exception):
    pass
class Element: pass
class StreamOpen: pass
class Stanza: pass
class StreamClose: pass
class Tokenizer:
    def __init__(self, **kw):
        raise NotImplementedError("tokenizer not written yet")
