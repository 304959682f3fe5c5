"""The partner list as the DNS check and ``edgeproxy check`` see it: domains and proxy FQDNs.

A small adapter over the policy store (``edgeproxy.policy.store``), read-only: a check never
creates the store, so a state dir without ``policy.sqlite3`` simply has no partners yet. Keeping
the dependency in one function lets the checks run (and be tested) with any partner source.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from edgeproxy.config import EdgeConfig


@dataclass(frozen=True)
class PartnerInfo:
    domain: str
    additional_domains: tuple[str, ...] = ()
    proxy_fqdn: str | None = None

    @property
    def domains(self) -> tuple[str, ...]:
        return (self.domain, *self.additional_domains)


@dataclass(frozen=True)
class PartnerList:
    partners: list[PartnerInfo] = field(default_factory=list)
    source: str = ""
    error: str | None = None  # the store exists but cannot be read


def load_partners(config: EdgeConfig) -> PartnerList:
    try:
        from edgeproxy.policy.store import STORE_FILE, Store
    except ImportError:  # pragma: no cover - the policy package is part of edgeproxy
        return PartnerList(source="(policy store not available)")
    path = config.state_dir / STORE_FILE
    if not path.exists():
        return PartnerList(source=f"{path} (not created yet)")
    try:
        with Store(path) as store:
            _, configuration = store.read()
    except Exception as exc:  # noqa: BLE001 - any store failure is a finding, not a crash
        return PartnerList(source=str(path), error=f"cannot read {path}: {exc}")
    partners = [
        PartnerInfo(p.domain, tuple(p.additional_domains), p.proxy_fqdn) for p in configuration.partners
    ]
    return PartnerList(partners, str(path))
