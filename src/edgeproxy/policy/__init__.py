"""Policy: who may federate and what each stanza may do (SPEC §2–§6).

Modules, each of one concept:

* ``names``      — domain / SIP address / JID normalisation (IDNA UTS46, case folding).
* ``model``      — the stored configuration as frozen msgspec Structs (partners, gateway
  settings, external access policies, users).
* ``validation`` — the §2.1 negotiation matrix and every save-time rule; refuses before saving.
* ``credentials`` — SIP digest credentials: a user's password turned into the stored HA1 hashes.
* ``snapshot``   — one immutable snapshot with its indexes (domain → partner, address → user,
  effective policy per user precomputed).
* ``engine``     — pure stream-level and stanza-level decisions over a snapshot.
* ``store``      — the SQLite store (WAL) with its schema migrations.
* ``operations`` — validated changes, one write transaction each (used by the commands).
* ``holder``     — ``SnapshotHolder``: notices committed changes and rebuilds the snapshot.
* ``transfer``   — ``config export`` / ``config import`` documents (secrets only on request).

Nothing here imports trio or argparse: the pure core is shared by the server, the commands
(``edgeproxy.commands``) and the tests.
"""
