"""The structured event log: stable event ids, JSON lines, body redaction.

Theory of operation
-------------------
Every warning and error the edge can report belongs to one *event class* of the frozen
``CATALOGUE``: a stable id (``EP1001``), a short name (``bind-failed``), a severity, a message
template and a troubleshooting hint (SPEC §10: the Lync admin's Event Viewer). Ids never change
meaning and are never reused; ``docs/events.md`` lists them and a test keeps the two in step.

Callers emit with ``event_log.emit(BIND_FAILED, address="0.0.0.0:5269", error="...")``. ``emit``
never blocks and never raises: it redacts the fields, builds the record and appends it to a
bounded buffer; a writer thread encodes and writes. When the buffer is full the record is dropped
and counted, and the next written line is an ``EP9001 event-log-overflow`` saying how many were
lost — the trade-off is deliberate: a slow log sink (a stuck pipe, a full disk) must not stall the
routing of stanzas.

Rate limit (issue 13: an unauthenticated peer must not be able to make us write without bound):
warnings and errors pass a token bucket per event id (per id and logger for ``EP9002``) —
``EVENT_BURST`` at once, then ``EVENT_RATE`` per second. What the bucket refuses is not even
formatted; it is counted, and at most ``SUMMARY_INTERVAL`` seconds later one ``EP9003
events-suppressed`` line per id says how many were left out. Info events are not limited (an
unauthenticated peer cannot cause them). A flood of 1,000 refused connections a second thus
writes a few lines a second, not a few thousand.

Output: one JSON object per line (``ts``, ``id``, ``event``, ``severity``, ``message``, the
fields, ``hint``), or, when the output is a terminal, one readable line per event.

Redaction (SPEC §3 *log message bodies*): unless ``log_message_bodies`` is on, every field that may
carry stanza content is replaced by ``"[redacted N chars]"`` — fields named in
``CONTENT_FIELDS``, any ``bytes`` value (raw stanza bytes) and any value wrapped in ``Content`` —
and ``<body>``, ``<subject>`` and ``<status>`` elements inside any other string are emptied.
"""

from __future__ import annotations

import enum
import logging
import re
import string
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import IO, Any, Literal

import msgspec


class Severity(enum.StrEnum):
    """How bad an event is; the JSON ``severity`` field."""

    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class EventClass:
    """One kind of event: stable id, name, severity, message template and troubleshooting hint."""

    id: str
    name: str
    severity: Severity
    meaning: str
    template: str
    hint: str

    def message(self, fields: Mapping[str, object]) -> str:
        """The template filled from ``fields``; a missing field shows as ``?``."""
        return _FORMATTER.vformat(self.template, (), _Missing(fields))


class _Missing(dict[str, object]):
    def __init__(self, fields: Mapping[str, object]) -> None:
        super().__init__(fields)

    def __missing__(self, key: str) -> str:
        return "?"


_FORMATTER = string.Formatter()


@dataclass(frozen=True, slots=True)
class Content:
    """Marks a value as stanza content (a body, a note, raw stanza text): redacted by default."""

    value: str | bytes


# ---------------------------------------------------------------------------------------------
# The catalogue. Ranges: 1xxx lifecycle and listeners, 2xxx certificates and TLS, 3xxx partners
# and authentication, 4xxx DNS and outbound connections, 5xxx gateway channel, 6xxx limits,
# 7xxx stream and stanza errors, 8xxx configuration and admin, 9xxx the event log itself.
# ---------------------------------------------------------------------------------------------

_I, _W, _E = Severity.INFO, Severity.WARNING, Severity.ERROR

_DEFINITIONS: tuple[EventClass, ...] = (
    EventClass("EP1000", "started", _I, "The edge is running: every listener is bound.",
               "edge started for {domains} ({listeners})",
               "None; `edgeproxy status` shows the listeners and streams."),
    EventClass("EP1001", "bind-failed", _E, "A listener — `external` (S2S, 5269), `internal` (the loopback channel, 23456), `admin`, or `sip-udp`, `sip-tcp`, `sip-tls` (the gateway) — could not bind its address; `edgeproxy serve` does not start (exit status 20 in use, 21 not permitted, 22 other: docs/exit-codes.md).",
               "cannot bind {role} listener on {address}: {error}",
               "Another process may hold the port — a second edgeproxy? (`ss -ltnup 'sport = :5269'`, the port in the line); ports below 1024 need CAP_NET_BIND_SERVICE (the error names the program for `setcap 'cap_net_bind_service=+ep'`, or AmbientCapabilities=CAP_NET_BIND_SERVICE in the unit); check the address exists on this host (`ip addr`)."),
    EventClass("EP1002", "accept-failed", _W, "Accepting a connection failed, usually for lack of file descriptors.",
               "accept on {address} failed: {error}; retrying",
               "Raise the descriptor limit (LimitNOFILE= in the systemd unit) or lower the connection limits."),
    EventClass("EP1003", "shutdown-started", _I, "A graceful shutdown began: no new streams, queues draining.",
               "shutting down ({reason}); draining for at most {bound_seconds} s",
               "None. A second SIGTERM or the drain bound ends the process."),
    EventClass("EP1004", "shutdown-complete", _I, "The graceful shutdown finished.",
               "stopped: {delivered} stanzas delivered and {bounced} bounced while draining",
               "None."),
    EventClass("EP1005", "shutdown-timeout", _W, "The drain bound passed before every stream closed; the rest were bounced and aborted.",
               "drain bound of {bound_seconds} s reached: {bounced} stanzas bounced, {streams} streams aborted",
               "A partner was slow to accept its queued stanzas; check its reachability. Raise the unit's TimeoutStopSec only together with the drain bound."),
    EventClass("EP1006", "internal-error", _E, "An unexpected exception in one task; the task was restarted or its stream closed.",
               "internal error in {task}: {error}",
               "A bug: file an issue with this line and the lines before it."),
    EventClass("EP1007", "input-failed", _W, "Handling one input (a connection, datagram, channel frame or item, admin request or DNS answer) raised an exception nobody expected: that input alone got its protocol's error and was closed; the server went on (the failure boundary, docs/design.md).",
               "{surface} from {peer} failed: {error}; answered with {answer}",
               "Usually a malformed input from the peer named here; if it recurs with well-formed input it is a bug: file an issue with this line. `edgeproxy_input_failures_total` counts these per surface."),
    EventClass("EP1010", "worker-started", _I, "With `[edge] workers` above 1 (`serve --workers N`), the supervisor started one edge worker process (also after a restart); it shares the external listeners and has its own loopback channel to the gateway.",
               "edge worker {index} started (pid {pid}, channel {internal})",
               "None; `edgeproxy status` lists the workers."),
    EventClass("EP1011", "worker-exited", _E, "An edge worker process ended without being asked to; its streams were lost (partners reconnect) and the supervisor restarts it after a pause that doubles with each quick failure.",
               "edge worker {index} (pid {pid}) exited with {status}; restarting it in {delay} s",
               "The lines before this one from the same pid say why; a worker that keeps failing is a bug or a resource limit (memory, descriptors): file an issue with these lines."),
    EventClass("EP1012", "workers-stopped", _I, "The supervisor's graceful stop: every edge worker drained and ended, then the gateway stopped.",
               "all {count} edge workers stopped",
               "None."),
    EventClass("EP2001", "certificate-expiring", _W, "The edge certificate expires soon.",
               "certificate {subject} expires in {days} days ({not_after})",
               "Request a new one (`edgeproxy cert request`), import it (`edgeproxy cert import`), then `edgeproxy reload`."),
    EventClass("EP2002", "certificate-expired", _E, "The edge certificate has expired: partners will refuse TLS.",
               "certificate {subject} expired on {not_after}",
               "Import a renewed certificate (`edgeproxy cert import`) and run `edgeproxy reload`."),
    EventClass("EP2003", "certificate-load-failed", _E, "The certificate, key or trust bundle (or the loopback channel secret, or the admin token) could not be loaded; at start, one that is configured but does not load stops `edgeproxy serve` (exit status 16) rather than run without it.",
               "cannot load {what} from {path}: {error}",
               "Check the [tls] paths and file permissions; `edgeproxy check` and `edgeproxy cert show` explain what is wrong."),
    EventClass("EP2004", "tls-handshake-failed", _W, "A TLS handshake with a peer failed.",
               "TLS handshake with {peer} ({direction}) failed: {reason}",
               "Compare TLS versions and ciphers with the partner; an unknown-CA alert means one side lacks the other's CA (the [tls] trust bundle)."),
    EventClass("EP2005", "peer-certificate-invalid", _W, "A partner's certificate is untrusted or not valid for its domain; SASL EXTERNAL is not offered.",
               "certificate of {peer} not valid for {domain}: {reason}",
               "The partner's certificate must name its XMPP domain (DNS-ID, SRV-ID or XmppAddr) and chain to a CA in the trust bundle."),
    EventClass("EP2006", "tls-unavailable", _W, "No edge certificate is configured: the edge runs without STARTTLS, so only TCP dialback works.",
               "no certificate at {path}: STARTTLS and SASL EXTERNAL are unavailable, partners can only use TCP dialback",
               "Create or import a certificate (`edgeproxy cert request` / `edgeproxy cert import`, `edgeproxy cert self-signed` for a lab) at the [tls] paths, then `edgeproxy reload`."),
    EventClass("EP2007", "bad-certificate", _W, "A peer presented a certificate that cannot be parsed (malformed DER, repeated extension…); it is treated as no valid certificate.",
               "certificate of {peer} ({direction}) cannot be parsed: {reason}",
               "The partner's certificate is malformed: it must re-issue it. Until then only dialback (where its row allows it) can authenticate the partner."),
    EventClass("EP3001", "partner-refused", _W, "A stream from or to a domain that is not a partner was refused (there is no default partner).",
               "{direction} stream with {domain} refused: not a partner",
               "Add the domain as a partner or as an additional domain of one (`edgeproxy partner new`), then it applies without restart."),
    EventClass("EP3002", "authentication-failed", _W, "A peer failed to authenticate; `reason` says why (method-not-allowed, certificate-invalid, sasl-failure, dialback-invalid, dialback-timeout, tls-required).",
               "authentication of {domain} ({direction}, {method}) failed: {reason}",
               "method-not-allowed and tls-required: compare the partner's TLS/SASL/dialback row (`edgeproxy partner get`) with what the peer offers; dialback-invalid: every edge of the pool must share the dialback secret."),
    EventClass("EP3003", "spoofed-from", _W, "A stanza's from domain was not authenticated on its stream; the stream was closed with invalid-from.",
               "stream {stream_id} from {peer} sent from={from_domain} that it did not authenticate",
               "A misconfigured partner that serves several domains over one stream must authenticate each (dialback per domain) or list them as its additional domains."),
    EventClass("EP3004", "host-unknown", _W, "A peer addressed a domain that is not ours; the stream was closed with host-unknown.",
               "{peer} addressed {to_domain}, which is not one of our domains",
               "The partner's DNS or configuration points at the wrong edge, or [edge] domains lacks a domain."),
    EventClass("EP3005", "stream-established", _I, "A stream finished negotiation and authentication.",
               "{direction} stream {stream_id} with {partner} established ({method}, {tls_version})",
               "None."),
    EventClass("EP3006", "stream-closed", _I, "A stream closed.",
               "{direction} stream {stream_id} with {partner} closed: {reason}",
               "None, unless streams close and reopen often: then look for stream errors from the same partner."),
    EventClass("EP3007", "negotiation-timeout", _W, "A stream did not finish negotiation within the establishment timeout.",
               "stream with {peer} not established within {timeout_seconds} s (stuck in {state})",
               "The peer may be waiting for a feature we do not offer; compare the partner's negotiation row with the peer's configuration."),
    EventClass("EP3008", "keepalive-timeout", _W, "A partner with keep-alive enabled showed no traffic within the keep-alive interval.",
               "stream {stream_id} with {partner} silent for {seconds} s; closed",
               "A firewall or NAT may drop idle connections; or disable keep-alive for this partner."),
    EventClass("EP4001", "dns-failed", _W, "A DNS lookup for a partner failed (SRV, then A/AAAA fallback).",
               "{rtype} lookup of {name} failed: {outcome}",
               "`edgeproxy dns check` tests the partner's records; check /etc/resolv.conf; a proxy FQDN on the partner bypasses SRV."),
    EventClass("EP4002", "connect-failed", _W, "No address of a partner accepted a connection.",
               "cannot connect to {domain}: {error} (tried {targets})",
               "Check outbound firewall rules for TCP 5269 and `edgeproxy dns check --reach`."),
    EventClass("EP4003", "outbound-bounced", _W, "Queued stanzas for a partner were bounced because no stream could be established.",
               "{count} stanzas to {domain} bounced with {condition}",
               "See the dns-failed / connect-failed / authentication-failed lines for the same domain just before."),
    EventClass("EP5001", "channel-connected", _I, "The gateway connected to the loopback channel.",
               "gateway channel connected from {peer}",
               "None."),
    EventClass("EP5002", "channel-lost", _E, "The loopback channel to the gateway was lost; stanzas for local users are bounced until it returns.",
               "gateway channel from {peer} lost: {reason}",
               "Is the gateway running and pointed at [edge] internal-listen (port 23456)? With mutual TLS check both certificates."),
    EventClass("EP5003", "channel-refused", _W, "A connection to the internal listener was refused (failed client authentication or a second gateway).",
               "gateway channel connection from {peer} refused: {reason}",
               "Only the configured gateway may connect to the internal listener; check its client certificate."),
    EventClass("EP6001", "limit-reached", _W, "A named limit was reached (connections, per-partner connections, queue, pending dialback verifications).",
               "{limit} limit of {value} reached{for_partner}",
               "Raise the limit (`edgeproxy gateway set` or the partner's connection limit) if the load is legitimate; otherwise a partner may be misbehaving."),
    EventClass("EP6002", "stanza-too-large", _W, "A peer sent a stanza above the size limit; the stream was closed with policy-violation.",
               "{peer} sent a stanza of more than {limit} bytes",
               "Usually a misbehaving peer; the limit protects memory."),
    EventClass("EP6003", "write-timeout", _W, "A peer did not read what we sent within the write timeout; its stream was closed.",
               "{peer} did not read for {seconds} s ({direction}); stream closed",
               "A peer that stops reading holds memory and a connection slot; [limits] write-timeout sets the bound. If a legitimate partner hits it, its link is congested."),
    EventClass("EP7001", "stream-error-sent", _W, "We closed a stream with a stream error.",
               "sent stream error {condition} to {peer}: {text}",
               "The condition names the rule: invalid-from (a from domain the stream did not authenticate), host-unknown (a domain that is not ours), policy-violation (not or no longer a partner, a stanza over the size limit)."),
    EventClass("EP7002", "stream-error-received", _W, "A peer closed a stream with a stream error.",
               "received stream error {condition} from {peer}: {text}",
               "The peer's logs say why; host-unknown usually means the peer does not serve the domain we addressed."),
    EventClass("EP7003", "stanza-refused", _I, "A stanza was refused by policy and its sender answered with an error stanza.",
               "{kind} from {from_domain} to {to_domain} refused: {condition} ({rule})",
               "`edgeproxy policy get` and the user's grants explain the decision."),
    EventClass("EP7004", "stanza-bounced", _W, "A stanza could not be delivered and its sender got an error stanza; the cause says why (every bounce is also counted in edgeproxy_bounces_total by condition and cause).",
               "{kind} from {from_domain} to {to_domain} bounced: {condition} ({cause})",
               "partner-unreachable: see the dns-failed / connect-failed lines for the domain; gateway-queue-full: the gateway (or its SIP users) took less than partners sent for longer than [gateway] queue-wait; gateway-away: is the gateway running?; partner-queue-full: the partner is not reading its stream."),
    EventClass("EP8001", "config-reloaded", _I, "The configuration, certificates and store were re-read; still-allowed streams stay up.",
               "reloaded: partners added {added}, removed {removed}; {closed} streams closed",
               "None."),
    EventClass("EP8002", "reload-failed", _E, "A reload was refused; the running configuration is unchanged.",
               "reload refused: {error}",
               "Fix the file (`edgeproxy config validate`, `edgeproxy check`) and reload again."),
    EventClass("EP8003", "admin-denied", _W, "An admin write (reload, stop) arrived without a valid token.",
               "{method} {path} from {peer} denied: {reason}",
               "Writes need the token in the admin token file, readable only by the service account and the admin group."),
    EventClass("EP8004", "admin-listen-refused", _E, "The admin endpoint was configured on a non-loopback address without allow-remote; `edgeproxy serve` does not start (exit status 11).",
               "admin endpoint not started on {address}: not a loopback address",
               "Use 127.0.0.1 or ::1, or set [admin] allow-remote = true and protect the port."),
    EventClass("EP8005", "store-unavailable", _E, "The configuration store could not be opened or read: at start `edgeproxy serve` does not start (exit status 14); while running, the previous snapshot stays in force.",
               "store {path} unavailable: {error}",
               "Check the state dir's permissions and free space: a store made by a command run as root cannot be opened by the service account (`chown -R edgeproxy:edgeproxy /var/lib/edgeproxy`, then run the commands as that account); a file that is not a database was damaged or replaced (restore a backup). `edgeproxy partner get` reads the same store."),
    EventClass("EP8006", "contact-not-stored", _W, "The gateway could not record a contact change in the store: a PublicUnverified contact's pending subscription request, or a contact a SIP user added by subscribing to it.",
               "{change} {contact} for {user} not stored: {error}",
               "The user must exist in the store (`edgeproxy user get`); check the state dir's permissions and free space. Until it is stored the edge keeps refusing the contact's messages: `edgeproxy user contact add USER JID` records it by hand."),
    EventClass("EP8007", "secret-exposed", _E, "A secret at rest — the state dir, the store (policy.sqlite3 and its -wal/-shm), the admin token or the channel secret — grants more than its mode allows (others can read it, or the group can write it); `edgeproxy serve` refuses to start (exit status 13).",
               "refusing to start: {what} {path} has mode {mode}, more than {allowed}; fix: {fix}",
               "Run the chmod in the message as the service account (or root): the state dir 0750, the store and the channel secret 0600, the admin token 0640. Files usually get wide modes from a copy or restore without -p; `edgeproxy check` lists every such file."),
    EventClass("EP8008", "demo-user-created", _I, "At its first start on the embedded default configuration (no --config, no $EDGEPROXY_CONFIG), edgeproxy created the store with a demo SIP user and a generated password, shown here once and stored only as digest hashes. Never done for an operator's own configuration.",
               "demo user {user} created with password {password} (shown once; change it with `edgeproxy user set-password {user}`)",
               "Register a SIP client as sip:alice@contoso.test with this password at [gateway] sip-listen (127.0.0.1:5060). Lost it? `edgeproxy user set-password sip:alice@contoso.test` sets a new one; `edgeproxy user remove` removes the demo user."),
    EventClass("EP8009", "config-unreadable", _E, "`edgeproxy serve` could not read its configuration file (--config, else $EDGEPROXY_CONFIG) and does not start (exit status 10).",
               "cannot read the configuration {path}: {error}",
               "Check the path and that the service account can read the file: under the systemd unit, `sudo -u edgeproxy cat /etc/edgeproxy/edgeproxy.toml`."),
    EventClass("EP8010", "config-invalid", _E, "`edgeproxy serve` refused its configuration (not TOML, an unknown key, a wrong value or a refused combination of keys) and does not start (exit status 11).",
               "configuration refused: {error}",
               "`edgeproxy config validate --config FILE` names the key and the rule; `edgeproxy config show-default` shows every key with its default."),
    EventClass("EP8011", "state-dir-unusable", _E, "The state dir (store, secrets) cannot be created or written, or it lies under /etc; `edgeproxy serve` does not start (exit status 12).",
               "state dir {path} cannot be used: {error}",
               "The state dir must be writable by the service account: under the systemd unit set an absolute state-dir = \"/var/lib/edgeproxy\" (the unit's StateDirectory=). A relative state-dir is resolved against the configuration file's directory, and /etc is read-only under the unit (ProtectSystem=strict)."),
    EventClass("EP8012", "store-too-new", _E, "The store was upgraded by a newer edgeproxy: its schema is newer than this one knows, so it is not opened and `edgeproxy serve` does not start (exit status 15).",
               "store {path} has schema version {version}; this edgeproxy knows up to {known}",
               "Run the newer edgeproxy again, or — with every edgeproxy process stopped — restore the copy the upgrade made (policy.sqlite3.bak-v{known}-… in the state dir) over policy.sqlite3 and remove policy.sqlite3-wal and -shm; changes made since are lost."),
    EventClass("EP8013", "store-upgraded", _I, "The store had an older schema: it was copied (0600, in the state dir), then upgraded to this edgeproxy's schema.",
               "store {path} upgraded from schema {from_version} to {to_version}; the store as it was is saved in {backup}",
               "None. To go back to the previous edgeproxy: stop every edgeproxy process, copy the backup over policy.sqlite3 and remove policy.sqlite3-wal and -shm. The copy holds secrets like the store: remove it once the new version runs well."),
    EventClass("EP8014", "panel-change", _I, "A change made in the Control Panel (the web administration under /ui/), with who made it: the role, how it logged in (token or password) and from where.",
               "{who} changed {kind} {name}: {action}",
               "None. The same change made with the CLI is not logged; this line is the Control Panel's audit trail."),
    EventClass("EP8015", "panel-login", _I, "A Control Panel login or logout.",
               "Control Panel {action} as {role} ({method}) from {peer}",
               "None. A failed login is EP8003 admin-denied (path /ui/login)."),
    EventClass("EP8016", "appliance-mode", _I, "`edgeproxy serve` runs in appliance mode (`[edge] appliance = true` or `--appliance`): the root filesystem may be read-only, everything the server writes goes under the state dir (temporary files in its tmp/ directory), the override file in the state dir is merged over the configuration, and events go to stderr only.",
               "appliance mode: writes under {state_dir}, temporary files in {tmpdir}; override file: {override}",
               "None. docs/appliance.md describes the contract; change settings in <state-dir>/edgeproxy.override.toml and run `edgeproxy reload`."),
    EventClass("EP8501", "pool-serving", _I, "A pool primary (`[pool] role = \"primary\"`) serves its store to the pool members on `[pool] listen`.",
               "pool primary serving the store (generation {generation}) on {address} ({security})",
               "None. `edgeproxy pool status` on a member shows the copy it holds (docs/pool.md)."),
    EventClass("EP8502", "pool-copy-applied", _I, "A pool member applied a new copy of its primary's store (one transaction; its own contact lists kept); the edge applies it at once.",
               "copy of the primary's store applied: primary generation {generation} from {primary}",
               "None."),
    EventClass("EP8503", "pool-primary-unreachable", _W, "A pool member cannot reach its primary (or lost it): it goes on serving its last copy of the store, and tries again every `[pool] interval` seconds. Said once per outage.",
               "cannot reach the pool primary {primary}: {error}; serving the copy of primary generation {generation}",
               "Check that the primary runs (`edgeproxy status` there), that `[pool] listen` on the primary and `[pool] primary` here name the same address, and the firewall between them. Changes made on the primary meanwhile arrive when it is reached again."),
    EventClass("EP8504", "pool-refused", _W, "A pool connection was refused: a wrong pool secret, a certificate the TLS trust does not accept (or none), a plain-text peer where TLS is on, or another protocol version or role. Reported by the side that refused, and by a member that was refused.",
               "pool connection {direction} {peer} refused: {reason}",
               "Every host of the pool needs the same <state-dir>/pool.secret (mode 0600; `edgeproxy pool secret` on the primary prints it) and, with `[pool] tls`, a certificate from the `[tls] trust` CA naming the address it is reached at; `[pool] tls` must be the same on every host."),
    EventClass("EP8505", "pool-protocol-error", _W, "The other side of a pool connection sent a malformed, oversized or out-of-turn frame (or none in time); that connection was closed and the pool goes on.",
               "pool connection {direction} {peer} closed: {reason}",
               "A client that is not an edgeproxy pool member (a port scanner, a misdirected service) or a version mismatch; if it recurs between two edgeproxy hosts, file an issue with this line."),
    EventClass("EP8506", "pool-apply-failed", _E, "A pool member could not apply the copy of the store its primary sent (the store refused it, or the disk did); it goes on serving the copy it had and fetches again.",
               "the primary's store (generation {generation}) could not be applied: {error}; still serving primary generation {current}",
               "Check the disk and the store (`edgeproxy check`); both hosts should run the same edgeproxy version."),
    EventClass("EP9001", "event-log-overflow", _W, "The event log buffer was full and events were dropped (callers never wait on the log).",
               "{dropped} events dropped: the log output is too slow",
               "The log sink (journal, file, pipe) is slow or blocked; check disk space and the journal rate limit."),
    EventClass("EP9003", "events-suppressed", _W, "An event recurred faster than the event log's rate limit; the repeats were counted, not written.",
               "{count} {suppressed_event} ({suppressed_id}) events left out in the last {seconds} s",
               "The count says how often it happened: read the last written line of that id. A flood of refused connections or failing peers usually causes it; `edgeproxy_events_suppressed_total` counts per id."),
    EventClass("EP9002", "log-record", _W, "A warning from a library or module without its own event class.",
               "{logger}: {text}",
               "Read the text; if it recurs, ask for a dedicated event id."),
)

CATALOGUE: Mapping[str, EventClass] = MappingProxyType({e.id: e for e in _DEFINITIONS})
"""Every event class, by id. Frozen: ids are stable and never reused."""

STARTED = CATALOGUE["EP1000"]
BIND_FAILED = CATALOGUE["EP1001"]
ACCEPT_FAILED = CATALOGUE["EP1002"]
SHUTDOWN_STARTED = CATALOGUE["EP1003"]
SHUTDOWN_COMPLETE = CATALOGUE["EP1004"]
SHUTDOWN_TIMEOUT = CATALOGUE["EP1005"]
INTERNAL_ERROR = CATALOGUE["EP1006"]
INPUT_FAILED = CATALOGUE["EP1007"]
WORKER_STARTED = CATALOGUE["EP1010"]
WORKER_EXITED = CATALOGUE["EP1011"]
WORKERS_STOPPED = CATALOGUE["EP1012"]
CERTIFICATE_EXPIRING = CATALOGUE["EP2001"]
CERTIFICATE_EXPIRED = CATALOGUE["EP2002"]
CERTIFICATE_LOAD_FAILED = CATALOGUE["EP2003"]
TLS_HANDSHAKE_FAILED = CATALOGUE["EP2004"]
PEER_CERTIFICATE_INVALID = CATALOGUE["EP2005"]
TLS_UNAVAILABLE = CATALOGUE["EP2006"]
BAD_CERTIFICATE = CATALOGUE["EP2007"]
PARTNER_REFUSED = CATALOGUE["EP3001"]
AUTHENTICATION_FAILED = CATALOGUE["EP3002"]
SPOOFED_FROM = CATALOGUE["EP3003"]
HOST_UNKNOWN = CATALOGUE["EP3004"]
STREAM_ESTABLISHED = CATALOGUE["EP3005"]
STREAM_CLOSED = CATALOGUE["EP3006"]
NEGOTIATION_TIMEOUT = CATALOGUE["EP3007"]
KEEPALIVE_TIMEOUT = CATALOGUE["EP3008"]
DNS_FAILED = CATALOGUE["EP4001"]
CONNECT_FAILED = CATALOGUE["EP4002"]
OUTBOUND_BOUNCED = CATALOGUE["EP4003"]
CHANNEL_CONNECTED = CATALOGUE["EP5001"]
CHANNEL_LOST = CATALOGUE["EP5002"]
CHANNEL_REFUSED = CATALOGUE["EP5003"]
LIMIT_REACHED = CATALOGUE["EP6001"]
STANZA_TOO_LARGE = CATALOGUE["EP6002"]
WRITE_TIMEOUT = CATALOGUE["EP6003"]
STREAM_ERROR_SENT = CATALOGUE["EP7001"]
STREAM_ERROR_RECEIVED = CATALOGUE["EP7002"]
STANZA_REFUSED = CATALOGUE["EP7003"]
STANZA_BOUNCED = CATALOGUE["EP7004"]
CONFIG_RELOADED = CATALOGUE["EP8001"]
RELOAD_FAILED = CATALOGUE["EP8002"]
ADMIN_DENIED = CATALOGUE["EP8003"]
ADMIN_LISTEN_REFUSED = CATALOGUE["EP8004"]
STORE_UNAVAILABLE = CATALOGUE["EP8005"]
CONTACT_NOT_STORED = CATALOGUE["EP8006"]
DEMO_USER_CREATED = CATALOGUE["EP8008"]
CONFIG_UNREADABLE = CATALOGUE["EP8009"]
CONFIG_INVALID = CATALOGUE["EP8010"]
STATE_DIR_UNUSABLE = CATALOGUE["EP8011"]
STORE_TOO_NEW = CATALOGUE["EP8012"]
STORE_UPGRADED = CATALOGUE["EP8013"]
SECRET_EXPOSED = CATALOGUE["EP8007"]
PANEL_CHANGE = CATALOGUE["EP8014"]
PANEL_LOGIN = CATALOGUE["EP8015"]
APPLIANCE_MODE = CATALOGUE["EP8016"]
POOL_SERVING = CATALOGUE["EP8501"]
POOL_COPY_APPLIED = CATALOGUE["EP8502"]
POOL_PRIMARY_UNREACHABLE = CATALOGUE["EP8503"]
POOL_REFUSED = CATALOGUE["EP8504"]
POOL_PROTOCOL_ERROR = CATALOGUE["EP8505"]
POOL_APPLY_FAILED = CATALOGUE["EP8506"]
EVENT_LOG_OVERFLOW = CATALOGUE["EP9001"]
LOG_RECORD = CATALOGUE["EP9002"]
EVENTS_SUPPRESSED = CATALOGUE["EP9003"]


def catalogue_markdown() -> str:
    """The catalogue as the Markdown table kept in ``docs/events.md``."""
    rows = ["| id | event | severity | meaning | hint |", "|---|---|---|---|---|"]
    for e in _DEFINITIONS:
        cells = (e.id, e.name, e.severity.value, e.meaning, e.hint)
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(rows) + "\n"


# ---------------------------------------------------------------------------------------------
# Redaction
# ---------------------------------------------------------------------------------------------

CONTENT_FIELDS = frozenset({"body", "bodies", "subject", "status_note", "note", "stanza", "xml", "content", "payload"})
"""Field names whose values are stanza content, redacted unless message bodies may be logged."""

MAX_FIELD_CHARS = 1000
"""Longer string values are cut (with a marker) so that one event stays one bounded line."""

_CONTENT_ELEMENTS = re.compile(
    r"<(?P<tag>(?:[A-Za-z_][\w.-]*:)?(?:body|subject|status))(?P<attrs>(?:\s[^>]*)?)>.*?</(?P=tag)\s*>",
    re.DOTALL,
)


def _redacted(value: str | bytes) -> str:
    return f"[redacted {len(value)} {'bytes' if isinstance(value, bytes) else 'chars'}]"


def _scrub_markup(text: str) -> str:
    if "<" not in text:
        return text
    return _CONTENT_ELEMENTS.sub(lambda m: f"<{m['tag']}{m['attrs']}>[redacted]</{m['tag']}>", text)


def _bounded(text: str) -> str:
    if len(text) <= MAX_FIELD_CHARS:
        return text
    return text[:MAX_FIELD_CHARS] + f"…[{len(text) - MAX_FIELD_CHARS} more chars]"


def redact_field(name: str, value: object, *, log_message_bodies: bool) -> object:
    """One field value as it may be logged (see the module docstring)."""
    if isinstance(value, Content):
        if not log_message_bodies:
            return _redacted(value.value)
        value = value.value
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        if not log_message_bodies:
            return _redacted(raw)
        return _bounded(raw.decode("utf-8", "replace"))
    if name in CONTENT_FIELDS and not log_message_bodies and value is not None:
        return _redacted(value if isinstance(value, str) else str(value))
    if isinstance(value, str):
        return _bounded(value if log_message_bodies else _scrub_markup(value))
    if isinstance(value, bool | int | float) or value is None:
        return value
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=str) if isinstance(value, set | frozenset) else value
        return [redact_field(name, v, log_message_bodies=log_message_bodies) for v in items]
    if isinstance(value, BaseException):
        value = f"{type(value).__name__}: {value}" if str(value) else type(value).__name__
    text = str(value)
    return _bounded(text if log_message_bodies else _scrub_markup(text))


# ---------------------------------------------------------------------------------------------
# The log
# ---------------------------------------------------------------------------------------------

_RESERVED = frozenset({"ts", "id", "event", "severity", "message", "hint"})
#: Warnings/errors of one id written at once before the rate limit acts (module docstring).
EVENT_BURST = 100
#: …then this many per second and id: 600 a minute, well under journald's default per-service
#: limit (10,000 per 30 s), so the journal never drops our lines for us.
EVENT_RATE = 10.0
#: How soon the count of suppressed events is written (seconds).
SUMMARY_INTERVAL = 1.0
_ENCODER = msgspec.json.Encoder()
_SEVERITY_ORDER = {Severity.INFO: 0, Severity.WARNING: 1, Severity.ERROR: 2}

OutputFormat = Literal["auto", "json", "text"]


def _timestamp(now: float) -> str:
    whole = int(now)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{int((now - whole) * 1000):03d}Z"


def render_text(record: Mapping[str, Any]) -> str:
    """One record as a human-readable line (terminal output)."""
    extra = " ".join(
        f"{k}={v}" for k, v in record.items() if k not in _RESERVED
    )
    line = f"{record['ts']} {str(record['severity']).upper():7} {record['id']} {record['event']}: {record['message']}"
    if extra:
        line += f"  [{extra}]"
    return line + f"\n    hint: {record['hint']}"


#: Warnings and errors an ``EventLog`` keeps in memory for ``recent_warnings``.
RECENT_WARNINGS = 50


class EventLog:
    """A bounded, non-blocking structured event log writing to a text stream.

    ``emit`` may be called from any thread or trio task; it never blocks on the output and never
    raises. A daemon writer thread encodes and writes; ``close()`` (or leaving the ``with`` block)
    flushes what is buffered, waiting at most ``close_timeout`` seconds.

    ``output``: ``"json"`` (JSON lines), ``"text"`` (readable lines) or ``"auto"`` (text when the
    stream is a terminal). ``minimum`` drops events below that severity. ``on_emit`` is called
    with each accepted event class (for the events counter in the metrics).
    """

    def __init__(
        self,
        stream: IO[str] | None = None,
        *,
        log_message_bodies: bool = False,
        output: OutputFormat = "auto",
        capacity: int = 10_000,
        minimum: Severity = Severity.INFO,
        on_emit: Callable[[EventClass], None] | None = None,
        clock: Callable[[], float] = time.time,
        rate_limit: tuple[int, float] | None = (EVENT_BURST, EVENT_RATE),
        on_suppress: Callable[[EventClass], None] | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._stream: IO[str] = stream if stream is not None else sys.stderr
        if output == "auto":
            isatty = getattr(self._stream, "isatty", None)
            output = "text" if callable(isatty) and isatty() else "json"
        self._text = output == "text"
        self.log_message_bodies = log_message_bodies
        self._minimum = _SEVERITY_ORDER[minimum]
        self._on_emit = on_emit
        self._clock = clock
        self._capacity = capacity
        self._buffer: deque[dict[str, Any]] = deque()
        #: the last RECENT_WARNINGS warnings and errors (what the Control Panel's dashboard shows)
        self._recent: deque[dict[str, Any]] = deque(maxlen=RECENT_WARNINGS)
        self._cond = threading.Condition()
        self._dropped = 0
        self._dropped_total = 0
        self._written = 0
        self._write_errors = 0
        self._closing = False
        self._idle = True
        self._rate_limit = rate_limit
        self._on_suppress = on_suppress
        #: key (event id, or id:logger) → [tokens, last refill (monotonic)]
        self._gates: dict[str, list[float]] = {}
        #: event id → events refused by the rate limit since the last summary
        self._suppressed: dict[str, int] = {}
        self._suppressed_total = 0
        self._summary_at = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="edgeproxy-event-log", daemon=True)
        self._thread.start()

    # -- emitting ---------------------------------------------------------------------------

    def emit(self, event: EventClass, /, **fields: object) -> None:
        """Record one event. Non-blocking; when the buffer is full the event is counted as dropped."""
        try:
            if _SEVERITY_ORDER[event.severity] < self._minimum:
                return
            if self._rate_limit is not None and event.severity is not Severity.INFO and not self._admit(event, fields):
                if self._on_suppress is not None:
                    self._on_suppress(event)
                return
            record = self._record(event, fields)
            with self._cond:
                if self._closing:
                    return
                if len(self._buffer) >= self._capacity:
                    self._dropped += 1
                    self._dropped_total += 1
                    return
                self._buffer.append(record)
                if event.severity is not Severity.INFO:
                    self._recent.append(record)
                self._idle = False
                self._cond.notify()
            if self._on_emit is not None:
                self._on_emit(event)
        except Exception:  # noqa: BLE001 - logging must never break the caller
            self._write_errors += 1

    def _admit(self, event: EventClass, fields: Mapping[str, object]) -> bool:
        """The rate limit (module docstring): True if this event may be written."""
        assert self._rate_limit is not None
        burst, rate = self._rate_limit
        key = event.id if event is not LOG_RECORD else f"{event.id}:{fields.get('logger')}"
        now = time.monotonic()
        with self._cond:
            gate = self._gates.get(key)
            if gate is None:
                if len(self._gates) >= 4096:  # bounded: ids × loggers are few; start over if not
                    self._gates.clear()
                gate = self._gates[key] = [float(burst), now]
            gate[0] = min(float(burst), gate[0] + (now - gate[1]) * rate)
            gate[1] = now
            if gate[0] >= 1.0:
                gate[0] -= 1.0
                return True
            if not self._suppressed:
                # The writer's wait gets a timeout (the summary's) from the first suppression
                # on: waking it for each one cost a thread switch per refused event (issue 21).
                self._cond.notify()
            self._suppressed[event.id] = self._suppressed.get(event.id, 0) + 1
            self._suppressed_total += 1
            return False

    def _take_summaries(self, force: bool = False) -> list[dict[str, Any]]:
        """EP9003 records for what the rate limit left out, once per ``SUMMARY_INTERVAL``
        (called by the writer with the lock held)."""
        now = time.monotonic()
        if not self._suppressed or (now - self._summary_at < SUMMARY_INTERVAL and not force):
            return []
        seconds = round(now - self._summary_at, 1)
        self._summary_at = now
        counts, self._suppressed = self._suppressed, {}
        return [
            self._record(EVENTS_SUPPRESSED, {"suppressed_id": event_id, "suppressed_event": CATALOGUE[event_id].name,
                                             "count": count, "seconds": seconds})
            for event_id, count in sorted(counts.items())
        ]

    def recent_warnings(self) -> list[dict[str, Any]]:
        """The last ``RECENT_WARNINGS`` warning and error records (as written), oldest first."""
        with self._cond:
            return list(self._recent)

    def _record(self, event: EventClass, fields: Mapping[str, object]) -> dict[str, Any]:
        bodies = self.log_message_bodies
        clean = {
            (f"field_{k}" if k in _RESERVED else k): redact_field(k, v, log_message_bodies=bodies)
            for k, v in fields.items()
        }
        record: dict[str, Any] = {
            "ts": _timestamp(self._clock()),
            "id": event.id,
            "event": event.name,
            "severity": event.severity.value,
            "message": event.message(clean),
        }
        record.update(clean)
        record["hint"] = event.hint
        return record

    # -- writing ----------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    summaries = self._take_summaries(force=self._closing)
                    if self._buffer or self._dropped or self._closing or summaries:
                        break
                    self._idle = True
                    self._cond.notify_all()
                    # with suppressed events pending, wake up to write their summary
                    self._cond.wait(SUMMARY_INTERVAL if self._suppressed else None)
                if not self._buffer and not self._dropped and not summaries and self._closing:
                    self._idle = True
                    self._cond.notify_all()
                    return
                batch = list(self._buffer) + summaries
                self._buffer.clear()
                dropped, self._dropped = self._dropped, 0
            if dropped:
                batch.insert(0, self._record(EVENT_LOG_OVERFLOW, {"dropped": dropped}))
            self._write(batch)

    def _write(self, batch: list[dict[str, Any]]) -> None:
        try:
            if self._text:
                out = "".join(render_text(r) + "\n" for r in batch)
            else:
                out = b"".join(_ENCODER.encode(r) + b"\n" for r in batch).decode("utf-8")
            self._stream.write(out)
            self._stream.flush()
            self._written += len(batch)
        except Exception:  # noqa: BLE001 - a broken sink must not kill the writer
            self._write_errors += 1

    # -- lifecycle --------------------------------------------------------------------------

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything emitted so far is written; False if ``timeout`` passed first."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._cond.notify_all()
            while not (self._idle and not self._buffer and not self._dropped):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._thread.is_alive():
                    return False
                self._cond.wait(remaining)
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Flush (at most ``timeout`` seconds) and stop the writer; later emits are ignored."""
        self.flush(timeout)
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout)

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def statistics(self) -> EventLogStatistics:
        """Counters: buffered now, written, dropped (full buffer), write errors."""
        with self._cond:
            return EventLogStatistics(
                buffered=len(self._buffer),
                written=self._written,
                dropped=self._dropped_total,
                write_errors=self._write_errors,
                suppressed=self._suppressed_total,
            )


@dataclass(frozen=True, slots=True)
class EventLogStatistics:
    buffered: int
    written: int
    dropped: int
    write_errors: int
    #: refused by the rate limit (counted in EP9003 lines)
    suppressed: int = 0


class EventLogHandler(logging.Handler):
    """Route stdlib ``logging`` records (WARNING and up) into the event log as ``EP9002``.

    Modules that use ``logging.getLogger`` still end up as JSON lines with a known id; the text
    goes through the same redaction as every other field.
    """

    def __init__(self, event_log: EventLog, level: int = logging.WARNING) -> None:
        super().__init__(level)
        self._event_log = event_log

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except Exception:  # noqa: BLE001
            text = str(record.msg)
        fields: dict[str, object] = {"logger": record.name, "text": text, "level": record.levelname.lower()}
        if record.exc_info and record.exc_info[1] is not None:
            fields["error"] = record.exc_info[1]
        self._event_log.emit(LOG_RECORD, **fields)
