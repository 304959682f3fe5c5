"""The network namespaces of the pool tests (``fixtures.netns``): what they connect, that the test
process stays in its own namespace, and that nothing is left behind, even when a test fails."""

from __future__ import annotations

import os
import socket
import subprocess
import time

import pytest

from fixtures.netns import FABRIC_ADDRESS, Namespace, inside, lab_namespaces, unique_tag


def own_namespace() -> str:
    return os.readlink("/proc/thread-self/ns/net")


def root_addresses() -> str:
    return subprocess.run(["ip", "-o", "address"], capture_output=True, text=True, check=True).stdout


def namespace_names() -> set[str]:
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in listing.splitlines() if line.strip()}


def connects(frm: Namespace, address: str, port: int) -> bool:
    """Whether a TCP connection from namespace ``frm`` to ``address:port`` is accepted."""
    with inside(frm), socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex((address, port)) == 0


def test_the_fabric_reaches_each_pool_and_the_pools_reach_the_fabric_and_each_other() -> None:
    with lab_namespaces(unique_tag(), ["pool-a", "pool-b"]) as lab:
        a, b = lab.pools["pool-a"], lab.pools["pool-b"]
        listeners = []
        for namespace, address in ((a, a.address), (b, b.address), (lab.fabric, FABRIC_ADDRESS)):
            with inside(namespace):
                listener = socket.create_server((address, 5269))
            listeners.append(listener)
        try:
            assert connects(lab.fabric, a.address, 5269) and connects(lab.fabric, b.address, 5269)
            assert connects(a, FABRIC_ADDRESS, 5269) and connects(b, FABRIC_ADDRESS, 5269)
            assert connects(a, b.address, 5269) and connects(b, a.address, 5269)
            # each namespace has its own 127.0.0.1: nothing listens on the fabric's
            assert not connects(lab.fabric, "127.0.0.1", 5269)
        finally:
            for listener in listeners:
                listener.close()


def test_inside_moves_only_the_block_into_the_namespace_even_when_it_raises() -> None:
    home, addresses = own_namespace(), root_addresses()
    with lab_namespaces(unique_tag(), ["pool-a"]) as lab:
        with pytest.raises(RuntimeError), inside(lab.pools["pool-a"]):
            assert own_namespace() != home
            raise RuntimeError("the block fails")
        assert own_namespace() == home
        assert "10.19." not in root_addresses(), "nothing of the lab in the test's own namespace"
    assert root_addresses() == addresses


def test_namespaces_and_what_runs_in_them_are_removed_when_the_test_fails() -> None:
    tag = unique_tag()
    started: list[subprocess.Popen[bytes]] = []
    with pytest.raises(AssertionError, match="the test fails"), lab_namespaces(tag, ["pool-a"]) as lab:
        names = {lab.fabric.name, lab.pools["pool-a"].name}
        assert names <= namespace_names()
        started.append(subprocess.Popen(lab.pools["pool-a"].command("sleep", "60")))
        deadline = time.monotonic() + 5
        while started[0].pid not in lab.pools["pool-a"].pids():
            assert time.monotonic() < deadline, "the process did not appear in its namespace"
            time.sleep(0.05)
        raise AssertionError("the test fails")
    assert not names & namespace_names()
    assert started[0].wait(timeout=5) == -9, "the process left inside was killed"
