"""Secrets follow hosts, not specs: where an evaluation endpoint may be, and which key it may be sent.

* `base_url` must be http(s) with a host; link-local and cloud metadata addresses (169.254.0.0/16, fe80::/10,
  fd00:ec2::254, metadata.google.internal, also as the address a name resolves to) are refused unless the operator
  sets FINETUNED_ALLOW_LINK_LOCAL.
* TOGETHER_API_KEY is sent only to the Together base URL (TOGETHER_BASE_URL, else api.together.xyz).
* Any other variable a spec names in `api_key_env` must be listed by the operator in FINETUNED_ENDPOINT_KEYS
  (`VAR=host[:port]|host2,VAR2=*`), and the endpoint's host must be one of its hosts (`*`: any).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Mapping

from yarl import URL

from daemon.config import Settings
from daemon.errors import BadInput
from daemon.spec import Endpoint

TOGETHER_KEY_VAR = "TOGETHER_API_KEY"
TOGETHER_ORIGIN = "https://api.together.xyz"
METADATA_HOSTS = frozenset({"metadata.google.internal", "metadata.goog", "metadata"})
LINK_LOCAL_NETS = (
    ipaddress.ip_network("169.254.0.0/16"),
    ipaddress.ip_network("fe80::/10"),
    ipaddress.ip_network("fd00:ec2::254/128"),
)
ANY_HOST = "*"
ALLOW_SETTING = "FINETUNED_ALLOW_LINK_LOCAL=1"
KEYS_SETTING = "FINETUNED_ENDPOINT_KEYS"


def is_link_local(host: str) -> bool:
    """True for a metadata host name or a link-local / metadata address (IPv4-mapped IPv6 included)."""
    name = host.strip("[]").lower().rstrip(".")
    if name in METADATA_HOSTS:
        return True
    try:
        address = ipaddress.ip_address(name.split("%")[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in net for net in LINK_LOCAL_NETS if net.version == address.version)


def check_base_url(what: str, base_url: str, settings: Settings) -> URL:
    """The parsed URL, or BadInput when it is not http(s) with a host, or names a link-local / metadata host."""
    try:
        url = URL(base_url)
    except ValueError as exc:
        raise BadInput(f"{what}: {base_url!r} is not a URL") from exc
    if url.scheme not in ("http", "https") or not url.host:
        raise BadInput(f"{what}: {base_url!r} must be an http:// or https:// URL with a host")
    if is_link_local(url.host) and not settings.allow_link_local:
        raise BadInput(f"{what}: {url.host} is a link-local / metadata address, refused ({ALLOW_SETTING} allows it)")
    return url


async def check_resolved(what: str, url: URL, settings: Settings) -> None:
    """BadInput when the host's name resolves to a link-local / metadata address (unless allowed); a name that
    does not resolve is left to the request (a transient failure)."""
    if settings.allow_link_local or url.host is None:
        return
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(url.host, url.port, type=socket.SOCK_STREAM)
    except OSError:
        return
    for info in infos:
        if is_link_local(str(info[4][0])):
            raise BadInput(f"{what}: {url.host} resolves to {info[4][0]}, a link-local / metadata address, refused")


def endpoint_keys(settings: Settings) -> dict[str, tuple[str, ...]]:
    """The operator's FINETUNED_ENDPOINT_KEYS: variable -> hosts it may be sent to."""
    allowed: dict[str, tuple[str, ...]] = {}
    for entry in filter(None, (part.strip() for part in settings.endpoint_keys.split(","))):
        var, sep, hosts = entry.partition("=")
        names = tuple(h.strip().lower() for h in hosts.split("|") if h.strip())
        if not sep or not var.strip() or not names:
            raise BadInput(f"{KEYS_SETTING}: {entry!r} is not VAR=host[|host...] (or VAR=*)")
        allowed[var.strip()] = names
    return allowed


def _host_matches(url: URL, hosts: tuple[str, ...]) -> bool:
    host = (url.host or "").lower()
    return ANY_HOST in hosts or host in hosts or f"{host}:{url.port}" in hosts


def check_key_for(what: str, var: str, url: URL, settings: Settings) -> None:
    """BadInput unless the key in `var` may be sent to `url` (see the module docstring)."""
    if var == TOGETHER_KEY_VAR:
        together = URL(settings.together_base_url or TOGETHER_ORIGIN).origin()
        if url.origin() != together:
            raise BadInput(f"{what}: {TOGETHER_KEY_VAR} is sent only to {together}, not to {url.origin()}")
        return
    hosts = endpoint_keys(settings).get(var)
    if hosts is None:
        raise BadInput(f"{what}: {var} may not be named by a spec (the operator lists allowed ones in {KEYS_SETTING})")
    if not _host_matches(url, hosts):
        raise BadInput(f"{what}: {var} may be sent only to {', '.join(hosts)} ({KEYS_SETTING}), not to {url.host}")


def endpoint_problems(endpoints: Mapping[str, Endpoint], settings: Settings) -> list[str]:
    """What `finetuned check` reports about a spec's evaluation endpoints under this operator's settings."""
    problems = []
    for alias, endpoint in endpoints.items():
        what = f"evaluate.endpoints.{alias}"
        try:
            url = check_base_url(f"{what}.base_url", endpoint.base_url, settings)
            if endpoint.api_key_env:
                check_key_for(f"{what}.api_key_env", endpoint.api_key_env, url, settings)
        except BadInput as exc:
            problems.append(str(exc))
    return problems


def key_value(var: str, settings: Settings) -> str | None:
    """The value of an allowed key variable (the Together key may come from a systemd credential)."""
    if var == TOGETHER_KEY_VAR:
        return settings.together_api_key or settings.named_secrets.get(var)
    return settings.named_secrets.get(var)
