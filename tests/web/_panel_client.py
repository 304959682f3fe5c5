"""A minimal HTTP client for the Control Panel tests (http.client, cookies kept by hand, no
redirects followed), and an in-process admin listener with the Control Panel on."""

from __future__ import annotations

import http.client
import re
import urllib.parse
from dataclasses import dataclass, field


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    cookies: list[str]
    body: str

    def csrf(self) -> str:
        """The CSRF token of the first form on the page."""
        found = re.search(r'name="csrf" value="([^"]+)"', self.body)
        assert found, self.body[:2000]
        return found.group(1)


@dataclass
class Client:
    host: str
    port: int
    host_header: str = "localhost"
    cookies: dict[str, str] = field(default_factory=dict)

    def request(self, method: str, path: str, fields: dict[str, str] | None = None) -> Answer:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        headers = {"Host": self.host_header}
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        body = None
        if fields is not None:
            body = urllib.parse.urlencode(fields)
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        try:
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read().decode("utf-8", "replace")
            set_cookies = response.headers.get_all("Set-Cookie") or []
            answer = Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, set_cookies, data)
        finally:
            conn.close()
        for cookie in set_cookies:
            name, _, rest = cookie.partition("=")
            value = rest.split(";", 1)[0]
            if value in ("", '""') or "max-age=0" in cookie.lower():
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = value
        return answer

    def get(self, path: str) -> Answer:
        return self.request("GET", path)

    def post(self, path: str, fields: dict[str, str]) -> Answer:
        return self.request("POST", path, fields)

    def login(self, secret: str) -> Answer:
        form = self.get("/ui/login")
        return self.post("/ui/login", {"csrf": form.csrf(), "secret": secret})
