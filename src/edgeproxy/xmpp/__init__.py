"""XMPP vocabulary on top of the tokenizer: namespaces, JIDs, one stanza on its own (parse, the
routing parts of its addresses), stanza errors, serialization, and the edge's answers to iq
requests addressed to a domain itself. Pure code: no I/O, no trio."""
