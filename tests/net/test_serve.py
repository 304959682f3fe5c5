"""``edgeproxy serve`` runs a real S2S listener that answers a partner's stream header."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_listens_and_refuses_a_stranger_with_a_stream_error(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "edgeproxy.toml"
    config.write_text(
        f'[edge]\ndomains = ["contoso.test"]\nlisten = ["127.0.0.1:{port}"]\nstate-dir = "state"\n'
        # private ports for everything else serve opens (never the fixed defaults)
        f'internal-listen = "127.0.0.1:{free_port()}"\n'
        f'[admin]\nlisten = "127.0.0.1:{free_port()}"\n'
        f'[gateway]\nsip-listen = ["127.0.0.1:{free_port()}"]\n'
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgeproxy", "serve", "--config", str(config)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            try:
                conn = socket.create_connection(("127.0.0.1", port), timeout=1)
                break
            except OSError:
                assert time.monotonic() < deadline, "serve did not listen"
                time.sleep(0.1)
        with conn:
            conn.settimeout(10)
            conn.sendall(
                b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams'"
                b" from='stranger.test' to='contoso.test' version='1.0'>"
            )
            data = b""
            while b"</stream:stream>" not in data:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                data += chunk
        assert b"<policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" in data
    finally:
        proc.terminate()  # our own child, by PID
        proc.wait(timeout=10)
