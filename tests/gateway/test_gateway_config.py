"""The [gateway] configuration section: defaults, overrides, refused keys and values."""

from __future__ import annotations

import pytest

from edgeproxy.config import load_config, parse_config
from edgeproxy.errors import ConfigError


def test_embedded_default_has_the_gateway_section_of_the_issue() -> None:
    gateway = load_config().gateway
    assert gateway.sip_listen == ("127.0.0.1:5060",)
    assert gateway.next_hop == ""
    assert (gateway.outage_bound, gateway.max_queued, gateway.page_mode_ceiling) == (
        30.0,
        10000,
        1300,
    )


def test_gateway_section_is_read_with_kebab_case_keys() -> None:
    text = '[gateway]\nsip-listen = ["127.0.0.1:5080", "127.0.0.2:5080"]\nnext-hop = "sip:127.0.0.1:5070;transport=tcp"\n'
    gateway = parse_config(text, source="t", base_dir=".").gateway
    assert gateway.sip_listen == ("127.0.0.1:5080", "127.0.0.2:5080")
    assert gateway.next_hop == "sip:127.0.0.1:5070;transport=tcp"


@pytest.mark.parametrize(
    "text",
    [
        "[gateway]\nsip-lisen = []\n",
        '[gateway]\nsip-listen = ["localhost"]\n',
        "[gateway]\noutage-bound = 0\n",
        "[gateway]\npage-mode-ceiling = 10\n",
    ],
)
def test_bad_gateway_settings_are_refused_naming_the_key(text: str) -> None:
    with pytest.raises(ConfigError, match=r"gateway"):
        parse_config(text, source="t", base_dir=".")
