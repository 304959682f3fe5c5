"""XMPP vocabulary on top of the tokenizer: namespaces, serialization (and later JIDs, stanza
views and error conditions). Pure code: no I/O, no trio."""
