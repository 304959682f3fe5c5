"""The Control Panel's Certificates, DNS and Check pages (in process, real sockets): the same
functions as ``edgeproxy cert request|import``, ``dns records|check`` and ``check``."""

from __future__ import annotations

import re
import subprocess

import trio
from _panel_fixture import PanelRunning

from edgeproxy.certs import selfsigned
from edgeproxy.certs.pem import certificates_pem
from edgeproxy.certs.store import configured_paths


async def logged_in(panel: PanelRunning):  # type: ignore[no-untyped-def]
    client = panel.client()
    await trio.to_thread.run_sync(lambda: client.login(panel.token))
    return client


async def test_the_wizard_proposes_the_topology_names_and_its_csr_is_what_openssl_reads(panel: PanelRunning) -> None:
    client = await logged_in(panel)
    page = await trio.to_thread.run_sync(lambda: client.get("/ui/certificates"))
    proposed = re.findall(r'name="san" value="([^"]+)"', page.body)
    fqdn = panel.config.edge.external_fqdn
    assert proposed == [fqdn, "sip.contoso.test", "contoso.test"]
    fields = [("csrf", page.csrf()), ("friendly_name", "Edge 2026"), ("organization", "Contoso"),
              ("country", "US"), ("key_size", "2048"), ("extra", "xmpp.contoso.test"),
              *[("san", n) for n in proposed]]

    answer = await trio.to_thread.run_sync(lambda: _post_pairs(client, fields))
    assert answer.status == 200, answer.body[-1500:]
    download = await trio.to_thread.run_sync(lambda: client.get("/ui/certificates/request.csr"))
    assert download.status == 200 and "attachment" in download.headers["content-disposition"]
    text = subprocess.run(["openssl", "req", "-text", "-noout"], input=download.body, capture_output=True,
                          text=True, check=True, timeout=30).stdout
    assert "Public-Key: (2048 bit)" in text and "O=Contoso" in text.replace(" = ", "=")
    for name in (*proposed, "xmpp.contoso.test"):
        assert f"DNS:{name}" in text
    key = configured_paths(panel.config).certificate.parent / "request.key"
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    [event] = panel.events("EP8014")
    assert event["kind"] == "certificate" and "2048-bit" in str(event["action"])


def _post_pairs(client, pairs):  # type: ignore[no-untyped-def]
    import http.client
    import urllib.parse

    conn = http.client.HTTPConnection(client.host, client.port, timeout=30)
    headers = {"Host": "localhost", "Content-Type": "application/x-www-form-urlencoded",
               "Cookie": "; ".join(f"{k}={v}" for k, v in client.cookies.items())}
    conn.request("POST", "/ui/certificates/request", body=urllib.parse.urlencode(pairs), headers=headers)
    response = conn.getresponse()
    from _panel_client import Answer
    answer = Answer(response.status, dict((k.lower(), v) for k, v in response.getheaders()), [],
                    response.read().decode())
    conn.close()
    return answer


async def test_a_small_key_or_a_bad_name_is_refused_next_to_its_field(panel: PanelRunning) -> None:
    client = await logged_in(panel)
    csrf = (await trio.to_thread.run_sync(lambda: client.get("/ui/certificates"))).csrf()
    answer = await trio.to_thread.run_sync(lambda: _post_pairs(client, [("csrf", csrf), ("key_size", "1024"),
                                                                          ("san", "contoso.test")]))
    assert answer.status == 400 and "key size must be one of 2048" in answer.body
    answer = await trio.to_thread.run_sync(lambda: _post_pairs(client, [("csrf", csrf), ("key_size", "2048"),
                                                                          ("extra", "not a name!")]))
    assert answer.status == 400 and 'id="error-extra"' in answer.body
    assert not (configured_paths(panel.config).certificate.parent / "request.csr").exists()


async def test_an_import_is_refused_with_the_checks_cause(panel: PanelRunning, tmp_path) -> None:  # type: ignore[no-untyped-def]
    client = await logged_in(panel)
    csrf = (await trio.to_thread.run_sync(lambda: client.get("/ui/certificates"))).csrf()
    authority = selfsigned.make_authority("Test CA")
    key = selfsigned.new_ec_key()
    cert = selfsigned.issue(authority, key.public_key(), ["other.example"])

    def upload():  # type: ignore[no-untyped-def]
        import http.client

        boundary = "xxBOUNDARYxx"
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"csrf\"\r\n\r\n{csrf}\r\n"
                f"--{boundary}\r\nContent-Disposition: form-data; name=\"certificate\"; filename=\"c.pem\"\r\n"
                "Content-Type: application/x-pem-file\r\n\r\n").encode() + certificates_pem([cert]) + \
            f"\r\n--{boundary}--\r\n".encode()
        conn = http.client.HTTPConnection(client.host, client.port, timeout=30)
        conn.request("POST", "/ui/certificates/import", body=body, headers={
            "Host": "localhost", "Content-Type": f"multipart/form-data; boundary={boundary}",
            "Cookie": "; ".join(f"{k}={v}" for k, v in client.cookies.items())})
        response = conn.getresponse()
        data = response.status, response.read().decode()
        conn.close()
        return data

    status, body = await trio.to_thread.run_sync(upload)
    assert status == 400 and "import-problem" in body
    assert not configured_paths(panel.config).certificate.exists()


async def test_the_dns_page_shows_the_records_to_publish(panel: PanelRunning) -> None:
    client = await logged_in(panel)
    page = await trio.to_thread.run_sync(lambda: client.get("/ui/dns?pools=edge1.contoso.test%3A10+edge2.contoso.test%3A20"))
    assert page.status == 200
    assert "_xmpp-server._tcp.contoso.test." in page.body and "edge2.contoso.test." in page.body
    bad = await trio.to_thread.run_sync(lambda: client.get("/ui/dns?pools=edge1.contoso.test"))
    assert "must be FQDN:PRIORITY" in bad.body


async def test_the_check_page_lists_the_check_lines(panel: PanelRunning) -> None:
    client = await logged_in(panel)
    page = await trio.to_thread.run_sync(lambda: client.get("/ui/check?dns=0"))
    assert page.status == 200
    assert "certificate" in page.body and "FAIL" in page.body  # no certificate in this state dir
    assert "not checked (--no-dns)" in page.body


async def test_the_live_dns_check_asks_the_configured_resolver(panel: PanelRunning, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from fixtures.dnsmasq import srv, start_dnsmasq

    port = int(panel.config.edge.listen[0].rsplit(":", 1)[1]) if panel.config.edge.listen else 5269
    dns = start_dnsmasq(tmp_path / "dns", [srv("_xmpp-server._tcp.contoso.test", "access.contoso.test", port)],
                        address="127.0.40.54")
    try:
        monkeypatch.setenv("EDGEPROXY_DNS_RESOLVER", dns.resolver)
        client = await logged_in(panel)
        page = await trio.to_thread.run_sync(lambda: client.get("/ui/dns?check=1"))
        assert page.status == 200 and 'id="dns-findings"' in page.body
        rows = re.findall(r"<tr><td class=\"(\w+)\">(\w+)</td><td>([^<]+)</td>", page.body)
        assert ("ok", "OK", "dns _xmpp-server._tcp.contoso.test") in rows, rows
        assert any(check == "dns access.contoso.test" and level == "FAIL" for _, level, check in rows), rows
    finally:
        dns.stop()


async def test_the_request_key_leaves_the_server_only_when_created_exportable(panel: PanelRunning) -> None:
    client = await logged_in(panel)
    csrf = (await trio.to_thread.run_sync(lambda: client.get("/ui/certificates"))).csrf()
    request = [("csrf", csrf), ("key_size", "2048"), ("san", "contoso.test")]
    assert (await trio.to_thread.run_sync(lambda: _post_pairs(client, request))).status == 200
    page = await trio.to_thread.run_sync(lambda: client.get("/ui/certificates"))
    assert 'id="download-key"' not in page.body
    refused = await trio.to_thread.run_sync(lambda: client.post("/ui/certificates/request.key", {"csrf": csrf}))
    assert refused.status == 403 and "BEGIN" not in refused.body
    assert (await trio.to_thread.run_sync(
        lambda: _post_pairs(client, [*request, ("exportable", "on")]))).status == 200
    assert 'id="download-key"' in (await trio.to_thread.run_sync(lambda: client.get("/ui/certificates"))).body
    assert (await trio.to_thread.run_sync(lambda: client.get("/ui/certificates/request.key"))).status == 405
    key = await trio.to_thread.run_sync(lambda: client.post("/ui/certificates/request.key", {"csrf": csrf}))
    assert key.status == 200 and key.body.startswith("-----BEGIN PRIVATE KEY-----")
    assert "attachment" in key.headers["content-disposition"]
    assert [e["action"] for e in panel.events("EP8014")][-1] == "request key exported"
