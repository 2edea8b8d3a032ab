"""Secrets follow hosts, not specs: the Together key goes only to the Together base URL, other key variables
only where the operator's FINETUNED_ENDPOINT_KEYS allows, base_url is http(s) and never link-local / metadata
unless the operator allows it."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.config import Settings
from daemon.errors import BadInput, SpecError
from daemon.remote import hosts
from daemon.sandbox import start_sandbox
from daemon.spec import parse_spec
from handlers import evaluate
from tests.handlers.test_evaluate import Recorder, make_ctx, small_stories

TOGETHER_KEY = "tk-together-secret-0001"
GATEWAY_KEY = "gw-secret-key-0002"


def settings_with(**changes: object) -> Settings:
    base: dict[str, object] = {
        "together_api_key": TOGETHER_KEY,
        "named_secrets": {"TOGETHER_API_KEY": TOGETHER_KEY, "MY_GATEWAY_KEY": GATEWAY_KEY},
    }
    return Settings(**(base | changes))  # type: ignore[arg-type]


def eval_file(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    small_stories(folder / "eval.jsonl")
    return folder / "eval.jsonl"


async def run_eval(tmp_path: Path, settings: Settings, endpoint: dict[str, str]) -> None:
    path = eval_file(tmp_path)
    spec = {"models": ["m"], "endpoints": {"m": endpoint}, "protocol": "cookbook", "max_missing_share": 1.0}
    await evaluate.run(make_ctx(tmp_path, settings, spec), {"prepare": {"eval_file": str(path)}})


async def test_together_key_goes_only_to_the_together_base_url(tmp_path: Path, recorder: tuple[Recorder, str]) -> None:
    """Naming TOGETHER_API_KEY for another host fails before any request; for the Together base URL it is sent."""
    rec, base_url = recorder
    with pytest.raises(BadInput, match="TOGETHER_API_KEY is sent only to"):
        await run_eval(tmp_path / "a", settings_with(), {"base_url": base_url, "api_key_env": "TOGETHER_API_KEY"})
    assert rec.bodies == []
    handle = await start_sandbox()
    try:
        settings = settings_with(together_base_url=handle.base_url)
        await run_eval(tmp_path / "b", settings, {"base_url": handle.base_url, "api_key_env": "TOGETHER_API_KEY"})
        assert handle.sandbox.stats.requests["POST /v1/chat/completions"] == 6
    finally:
        await handle.close()


async def test_other_key_variables_follow_the_operators_setting(tmp_path: Path, recorder: tuple[Recorder, str]) -> None:
    """A variable the operator did not list, or listed for another host, fails before any request; listed for
    this host (or `*`) its key is sent there."""
    rec, base_url = recorder
    endpoint = {"base_url": base_url, "api_key_env": "MY_GATEWAY_KEY"}
    with pytest.raises(BadInput, match="MY_GATEWAY_KEY may not be named by a spec"):
        await run_eval(tmp_path / "a", settings_with(), endpoint)
    with pytest.raises(BadInput, match="only to gw.example.com"):
        await run_eval(tmp_path / "b", settings_with(endpoint_keys="MY_GATEWAY_KEY=gw.example.com"), endpoint)
    assert rec.bodies == []
    await run_eval(
        tmp_path / "c", settings_with(endpoint_keys="OTHER=*,MY_GATEWAY_KEY=gw.example.com|127.0.0.1"), endpoint
    )
    assert set(rec.authorizations) == {f"Bearer {GATEWAY_KEY}"}
    with pytest.raises(BadInput, match="FINETUNED_ENDPOINT_KEYS"):
        await run_eval(tmp_path / "d", settings_with(endpoint_keys="MY_GATEWAY_KEY"), endpoint)


@pytest.mark.parametrize(
    "base_url",
    [
        "http://169.254.169.254/latest",
        "http://metadata.google.internal/computeMetadata/v1",
        "http://[fd00:ec2::254]/v1",
        "http://[fe80::1]:8080/v1",
        "http://[::ffff:169.254.169.254]/v1",
    ],
)
async def test_link_local_and_metadata_endpoints_are_refused(tmp_path: Path, base_url: str) -> None:
    """Metadata and link-local addresses are refused before any request; the operator's flag allows them."""
    with pytest.raises(BadInput, match="link-local / metadata address"):
        await run_eval(tmp_path, settings_with(), {"base_url": base_url})
    assert hosts.check_base_url("x", base_url, settings_with(allow_link_local=True)).host


def test_base_url_must_be_http() -> None:
    """A spec whose endpoint is not an http(s) URL is rejected with the key and the reason."""
    text = b"name: a\ndataset: {source: x}\nevaluate:\n  models: [m]\n  endpoints: {m: {base_url: 'file:///etc/x'}}\n"
    with pytest.raises(SpecError, match=r"evaluate.endpoints.m.base_url: .*must be an http:// or https:// URL"):
        parse_spec(text, "s.yaml")
    with pytest.raises(BadInput, match="http:// or https://"):
        hosts.check_base_url("x", "gopher://h/", Settings())
    assert not hosts.is_link_local("127.0.0.1") and not hosts.is_link_local("api.together.xyz")
