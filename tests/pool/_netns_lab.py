"""The edge pool lab: two edge pools, a real Prosody partner and a SIP user, each host in its own
network namespace (``fixtures.netns``).

Theory of operation
-------------------
``pool_lab(workdir, workers=1)`` is an async context manager that builds, in this order:

1. **Namespaces**: the fabric (10.19.0.1) and ``pool-a`` (10.19.1.2), ``pool-b`` (10.19.2.2).
2. **dnsmasq** in the fabric, answering ``_xmpp-server._tcp.contoso.test`` with two SRV records —
   priority 10 → ``pool-a.contoso.test`` (10.19.1.2), priority 20 → ``pool-b.contoso.test``
   (10.19.2.2), both port 5269 — and ``_xmpp-server._tcp.fabrikam.test`` → Prosody.
3. **Prosody** for ``fabrikam.test`` in the fabric (plain TCP, dialback), user ``alice``,
   resolving through that dnsmasq (``fixtures.xmpp_servers.start_prosody``, started inside the
   fabric with ``fixtures.netns.inside``).
4. **Two pools**, each one ``edgeproxy serve`` (role both: edge + gateway) started in its own
   namespace with ``ip netns exec``: S2S on ``<address>:5269``, SIP (UDP and TCP) on
   ``<address>:5060``, the loopback channel and admin on 127.0.0.1 of its namespace, its own
   state dir, ``[dns] resolver`` = the fabric's dnsmasq, ``[edge] workers`` = ``workers``.
   Each store is set up **by the CLI**, the same on both: the partner ``fabrikam.test``
   (federated, no TLS, dialback), the global policy with XMPP on, the SIP user
   ``carol@contoso.test`` with its password (MD5) and the same dialback secret.
5. **The SIP UA** of carol in the fabric (``_netns_sip_ua.SipUa``), registered at both pools'
   registrars; it records each MESSAGE with the address of the pool that sent it.

Options: ``priorities`` (pool name → SRV priority; default A 10, B 20) chooses which pools the
SRV records name; ``replicated=True`` makes pool A the primary of a replicated pool (``[pool]
role = "primary"``, listening on its address port 5270) and B its member (``role = "member"``),
with mutual TLS on the pool link (a private CA; each pool's certificate names its address) and
the pool secret that ``edgeproxy pool secret`` made on A copied into B's state dir, as
docs/pool.md sets a pool up: then only A is set up by the CLI and B serves A's store (the UA
registers at B once B has carol).

It yields a :class:`PoolLab`. ``await lab.login()`` logs alice in on Prosody (a
``fixtures.c2s.Client``, connected from inside the fabric); ``lab.pools["a"]`` is a
:class:`PoolEdge` (its process and event log, ``cli(...)``, ``terminate()``: SIGTERM, ``crash()``:
SIGKILL to all its processes). On the way out everything is stopped, Prosody's log is kept as
``prosody.log`` in ``workdir`` and the namespaces are removed; if the body raised, the tails of
Prosody's, dnsmasq's and the pools' logs are printed (pytest shows them with the failure).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import trio
import trustme
from _netns_sip_ua import SipUa

from fixtures.c2s import Client
from fixtures.dnsmasq import DnsServer, host, srv, start_dnsmasq, xmpp_server
from fixtures.netns import (
    FABRIC_ADDRESS,
    LabNamespaces,
    Namespace,
    inside,
    lab_namespaces,
    unique_tag,
)
from fixtures.ports import free_port
from fixtures.serve import ServeProcess
from fixtures.sipauth import PASSWORD as SIP_PASSWORD
from fixtures.xmpp_servers import PASSWORD as XMPP_PASSWORD
from fixtures.xmpp_servers import Prosody, start_prosody

DOMAIN = "contoso.test"  # the pools' XMPP and SIP domain
PARTNER = "fabrikam.test"  # Prosody's domain
XMPP_USER = "alice"  # alice@fabrikam.test, on Prosody
SIP_USER = "carol"  # carol@contoso.test, the SIP user behind the pools
#: The pools, in SRV priority order: name -> SRV priority.
POOLS = {"a": 10, "b": 20}
S2S_PORT, SIP_PORT, CHANNEL_PORT, ADMIN_PORT = 5269, 5060, 23456, 9269
#: The dialback secret every member of the pools shares.
DIALBACK_SECRET = "pool-lab-dialback-secret"
#: Seconds a pool may take to start (listeners bound, gateway channel connected).
POOL_START_TIMEOUT = 30
#: The primary's replication listener (``[pool] listen``), on pool A's address.
REPLICATION_PORT = 5270
#: Seconds a member may take to have the primary's store (carol registers there then).
REPLICATION_START_TIMEOUT = 15
#: Seconds one CLI command may take.
CLI_TIMEOUT = 30


@dataclass
class PoolEdge:
    """One pool member: ``edgeproxy serve`` in its namespace."""

    name: str
    namespace: Namespace
    config: Path
    serve: ServeProcess  # its admin address is 127.0.0.1 *inside* the namespace

    @property
    def address(self) -> str:
        return self.namespace.address

    def alive(self) -> bool:
        return self.serve.alive()

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``edgeproxy --config <this pool's file> ARGS`` (the real CLI)."""
        return run_cli(self.config, *args, check=check)

    def terminate(self, timeout: float = 40) -> int | None:
        """SIGTERM to ``edgeproxy serve`` (an operator's stop: graceful, workers drained); wait
        for it to end and return its exit status."""
        self.serve.proc.send_signal(signal.SIGTERM)
        return self.serve.proc.wait(timeout=timeout)

    def crash(self, timeout: float = 10) -> None:
        """SIGKILL to every process of the pool (the process, its edge workers: all that runs in
        its namespace), as when its host dies; returns once none is left."""
        for pid in self.namespace.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.serve.proc.wait(timeout=timeout)
        deadline = time.monotonic() + timeout
        while self.namespace.pids():
            assert time.monotonic() < deadline, f"pool {self.name}: processes left after SIGKILL"
            time.sleep(0.05)

    def stop(self) -> None:
        self.serve.stop()


@dataclass
class PoolLab:
    """A running lab (see the module docstring)."""

    namespaces: LabNamespaces
    dns: DnsServer
    prosody: Prosody
    pools: dict[str, PoolEdge]
    ua: SipUa
    nursery: trio.Nursery
    clients: list[Client] = field(default_factory=list)

    async def login(self, user: str = XMPP_USER) -> Client:
        """Log ``user``@fabrikam.test in on Prosody (resource ``interop``, presence sent)."""
        # The connection is opened while this thread is in the fabric (trio opens it in this
        # thread; nothing else in the test opens sockets meanwhile) and stays there.
        with inside(self.namespaces.fabric):
            client = await Client.login(self.prosody.address, self.prosody.c2s_port, user, PARTNER,
                                        XMPP_PASSWORD)
        self.clients.append(client)
        return client


def run_cli(config: Path, *args: str, check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """The real CLI, ``edgeproxy --config CONFIG ARGS``; with ``check`` a failure raises with its
    output."""
    done = subprocess.run([sys.executable, "-m", "edgeproxy", "--config", str(config), *args],
                          capture_output=True, text=True, timeout=CLI_TIMEOUT, input=stdin)
    if check and done.returncode != 0:
        raise AssertionError(f"edgeproxy {' '.join(args)} -> {done.returncode}:\n{done.stderr}")
    return done


def write_pool_config(
    workdir: Path, namespace: Namespace, dns: DnsServer, workers: int, pool_section: str = "",
    tls: str = '[tls]\ncertificate = "no/edge.pem"\nkey = "no/edge.key"\n',
) -> Path:
    """edgeproxy.toml of one pool member; by default no certificate (plain TCP dialback only)
    and no ``[pool]`` section (standalone)."""
    workdir.mkdir(parents=True, exist_ok=True)
    address = namespace.address
    path = workdir / "edgeproxy.toml"
    path.write_text(
        f'[edge]\ndomains = ["{DOMAIN}"]\nexternal-fqdn = "{namespace.name}.{DOMAIN}"\n'
        f'listen = ["{address}:{S2S_PORT}"]\ninternal-listen = "127.0.0.1:{CHANNEL_PORT}"\n'
        f'state-dir = "{workdir / "state"}"\nworkers = {workers}\n'
        f"{tls}"
        f'[admin]\nlisten = "127.0.0.1:{ADMIN_PORT}"\n'
        f'[gateway]\nsip-listen = ["{address}:{SIP_PORT}"]\nsip-tls-listen = []\n'
        f'[dns]\nresolver = "{dns.resolver}"\n'
        f"{pool_section}"
    )
    return path


def configure_by_cli(config: Path, workdir: Path) -> None:
    """The records the lab needs, made with the CLI as an operator would."""
    secret = workdir / "dialback-secret"
    secret.write_text(DIALBACK_SECRET + "\n")
    run_cli(config, "gateway", "set", "--dialback-secret-file", str(secret))
    run_cli(config, "partner", "new", PARTNER, "--type", "federated", "--tls", "not-supported",
            "--sasl", "not-supported", "--dialback")
    run_cli(config, "policy", "set", "global", "--xmpp", "--federation", "--public-cloud")
    sip = f"sip:{SIP_USER}@{DOMAIN}"
    run_cli(config, "user", "new", sip)
    run_cli(config, "user", "set-password", sip, "--password-file", "-", "--algorithms", "md5",
            stdin=SIP_PASSWORD + "\n")


def start_pool(name: str, namespace: Namespace, config: Path) -> PoolEdge:
    """Start one pool member from ``config`` (its store already set up, or replicated); returns
    once it serves S2S, answers ``/healthz`` and its gateway's channel is connected."""
    workdir = config.parent
    events = workdir / "events.jsonl"
    with events.open("wb") as err:
        proc = subprocess.Popen(
            namespace.command(sys.executable, "-m", "edgeproxy", "serve", "--config", str(config)),
            stdout=subprocess.DEVNULL, stderr=err, cwd=workdir,
        )  # ip netns exec execs: proc.pid is edgeproxy's own
    serve = ServeProcess(proc, workdir, "127.0.0.1", S2S_PORT, CHANNEL_PORT, ADMIN_PORT, SIP_PORT, events)
    pool = PoolEdge(name, namespace, config, serve)
    deadline = time.monotonic() + POOL_START_TIMEOUT
    while True:
        if not serve.alive():
            raise AssertionError(f"pool {name}: edgeproxy serve exited at start:\n{serve.log_tail()}")
        with inside(namespace), contextlib.suppress(OSError):
            with socket.create_connection((namespace.address, S2S_PORT), timeout=1):
                pass
            if serve.http_get("/healthz")[0] == 200:
                break
        if time.monotonic() > deadline:
            serve.stop()
            raise AssertionError(f"pool {name}: edgeproxy serve did not start:\n{serve.log_tail()}")
        time.sleep(0.1)
    serve.wait_for_event("EP5001", timeout=POOL_START_TIMEOUT)  # the gateway's channel is up
    return pool


class PoolTls:
    """A private CA and, per pool, a certificate naming the pool's address, host name and the
    domain (the pool link's mutual TLS: the member checks that the primary's certificate names
    the host of ``[pool] primary``)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.ca = trustme.CA()
        directory.mkdir(parents=True, exist_ok=True)
        self.ca.cert_pem.write_to_path(str(directory / "ca.pem"))

    def section(self, name: str, namespace: Namespace) -> str:
        """The ``[tls]`` section of pool ``name``."""
        leaf = self.ca.issue_cert(namespace.address, f"pool-{name}.{DOMAIN}", DOMAIN)
        cert, key = self.directory / f"pool-{name}.pem", self.directory / f"pool-{name}.key"
        cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
        key.write_bytes(leaf.private_key_pem.bytes())
        return (f'[tls]\ncertificate = "{cert}"\nkey = "{key}"\n'
                f'trust = "{self.directory / "ca.pem"}"\n')


def replicated_sections(names: dict[str, Namespace], workdir: Path) -> dict[str, tuple[str, str]]:
    """``[pool]`` and ``[tls]`` sections: the first pool the primary, the others its members,
    over mutual TLS (the pool secret is each one's ``<state-dir>/pool.secret``)."""
    tls = PoolTls(workdir / "pool-tls")
    primary_name, primary = next(iter(names.items()))
    sections = {}
    for name, namespace in names.items():
        role = ('role = "primary"\n' f'listen = "{primary.address}:{REPLICATION_PORT}"\n'
                if name == primary_name else
                'role = "member"\n' f'primary = "{primary.address}:{REPLICATION_PORT}"\n')
        sections[name] = (f"[pool]\n{role}tls = true\n", tls.section(name, namespace))
    return sections


def share_pool_secret(primary: Path, member: Path) -> None:
    """As docs/pool.md says: ``edgeproxy pool secret`` on the primary creates the secret (and
    prints it); its file is copied into the member's state dir, mode 0600."""
    run_cli(primary, "pool", "secret")
    source = primary.parent / "state" / "pool.secret"
    target = member.parent / "state" / "pool.secret"
    target.parent.mkdir(mode=0o750, parents=True, exist_ok=True)  # a state dir's mode
    target.write_bytes(source.read_bytes())
    target.chmod(0o600)


def lab_records(prosody_s2s_port: int, namespaces: LabNamespaces, priorities: Mapping[str, int]) -> list[str]:
    """dnsmasq options: the pools' SRV records by priority, their A records, and Prosody's."""
    records = []
    for name, priority in priorities.items():
        target = f"pool-{name}.{DOMAIN}"
        records += [srv(f"_xmpp-server._tcp.{DOMAIN}", target, S2S_PORT, priority=priority),
                    host(target, namespaces.pools[name].address)]
    return [*records, *xmpp_server(PARTNER, FABRIC_ADDRESS, prosody_s2s_port)]


async def register_everywhere(ua: SipUa, pools: Mapping[str, PoolEdge], timeout: float) -> None:
    """carol's UA registered at every pool (a member may still be fetching the user: retried)."""
    for pool in pools.values():
        status = 0
        with trio.move_on_after(timeout):
            while (status := await ua.register((pool.address, SIP_PORT))) != 200:
                await trio.sleep(0.2)
        assert status == 200, f"REGISTER at pool {pool.name}: {status}\n{pool.serve.log_tail()}"


@asynccontextmanager
async def pool_lab(
    workdir: Path, *, workers: int = 1, priorities: Mapping[str, int] = POOLS, replicated: bool = False
) -> AsyncIterator[PoolLab]:
    """Build the lab (see the module docstring) and tear it down at the end of the block.
    ``priorities``: the pools the SRV records name, with their priorities. ``replicated``: pool
    A is the primary and B its member (``[pool]``, mutual TLS): only A is set up by the CLI and B
    gets A's store; otherwise each pool is standalone and set up by the CLI on its own."""
    with lab_namespaces(unique_tag(), [f"pool-{name}" for name in POOLS]) as spaces:
        names = {name: spaces.pools[f"pool-{name}"] for name in POOLS}
        spaces = LabNamespaces(spaces.fabric, names)
        dns: DnsServer | None = None
        prosody: Prosody | None = None
        pools: dict[str, PoolEdge] = {}
        try:
            with inside(spaces.fabric):
                p_s2s, p_c2s = free_port(FABRIC_ADDRESS), free_port(FABRIC_ADDRESS)
                dns = start_dnsmasq(workdir / "dns", lab_records(p_s2s, spaces, priorities),
                                    address=FABRIC_ADDRESS)
                prosody = start_prosody(PARTNER, FABRIC_ADDRESS, (dns.address, dns.port),
                                        users=(XMPP_USER,), c2s_port=p_c2s, s2s_port=p_s2s)
                ua = SipUa.bind(FABRIC_ADDRESS, SIP_USER, DOMAIN)
            sections = replicated_sections(names, workdir) if replicated else {}
            for index, (name, namespace) in enumerate(names.items()):
                pool_section, *tls = sections.get(name, ("",))
                config = write_pool_config(workdir / f"pool-{name}", namespace, dns, workers,
                                           pool_section, *tls)
                if index == 0 or not replicated:
                    configure_by_cli(config, config.parent)
                else:
                    share_pool_secret(pools[next(iter(names))].config, config)
                pools[name] = start_pool(name, namespace, config)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(ua.run)
                await register_everywhere(ua, pools, REPLICATION_START_TIMEOUT)
                lab = PoolLab(spaces, dns, prosody, pools, ua, nursery)
                try:
                    yield lab
                finally:
                    nursery.cancel_scope.cancel()
                    for client in lab.clients:
                        with trio.CancelScope(shield=True), trio.move_on_after(1):
                            await client.aclose()
        except BaseException:
            _print_logs(dns, prosody, pools)
            raise
        finally:
            for pool in pools.values():
                pool.stop()
            if prosody is not None:
                (workdir / "prosody.log").write_text(prosody.log_text())  # its run dir goes
                prosody.stop()
            if dns is not None:
                dns.stop()


def _print_logs(dns: DnsServer | None, prosody: Prosody | None, pools: dict[str, PoolEdge]) -> None:
    if prosody is not None:
        print("---- prosody.log (tail) ----\n" + prosody.log_text()[-8000:])
    if dns is not None:
        print("---- dnsmasq.log (tail) ----\n" + _tail(dns.workdir / "dnsmasq.log", 3000))
    for pool in pools.values():
        print(f"---- pool {pool.name} events (tail) ----\n" + pool.serve.log_tail(4000))


def _tail(path: Path, size: int) -> str:
    try:
        return path.read_text(errors="replace")[-size:]
    except OSError:
        return ""


async def wait_until(predicate: Callable[[], object], timeout: float, what: str, step: float = 0.05) -> None:
    """Poll ``predicate`` until it is true; fail naming ``what`` after ``timeout`` seconds."""
    with trio.move_on_after(timeout):
        while not predicate():
            await trio.sleep(step)
        return
    raise AssertionError(f"not within {timeout} s: {what}")
