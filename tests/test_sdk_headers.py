"""Headers (and the query) the official SDKs send that mean something upstream, by default:
``openai-organization`` and ``openai-project`` reach OpenAI upstreams; ``anthropic-beta`` and the
Anthropic SDK's ``?beta=true`` reach Anthropic upstreams, and neither reaches an upstream of the
other protocol."""

from __future__ import annotations

from collections.abc import Callable

import anthropic
import httpx
import openai
import pytest
from anthropic.types import MessageParam

from tests.served import ServedGateway, two_protocol_config
from tests.upstreams import MockUpstream

CHAT: list[MessageParam] = [{"role": "user", "content": "hi"}]
BETA = "interleaved-thinking-2025-05-14"


@pytest.fixture
def gw(served: Callable[[str], ServedGateway], upstream_reset: MockUpstream) -> ServedGateway:
    return served(two_protocol_config(upstream_reset))


def test_openai_organization_and_project_reach_openai_upstreams(
    gw: ServedGateway, upstream_reset: MockUpstream
) -> None:
    with openai.OpenAI(
        base_url=gw.url + "/v1",
        api_key="k",
        organization="org-acme",
        project="proj-web",
        max_retries=0,
    ) as client:
        client.chat.completions.create(
            model="to-openai", messages=[{"role": "user", "content": "x"}]
        )
        client.responses.create(model="to-openai", input="x")
    for path in ("/v1/chat/completions", "/v1/responses"):
        sent = upstream_reset.last_request(path).headers
        assert (sent["openai-organization"], sent["openai-project"]) == ("org-acme", "proj-web")


def test_anthropic_beta_header_reaches_anthropic_upstreams(
    gw: ServedGateway, upstream_reset: MockUpstream
) -> None:
    with anthropic.Anthropic(base_url=gw.url, api_key="k", max_retries=0) as client:
        client.beta.messages.create(
            model="to-anthropic", max_tokens=16, messages=CHAT, betas=[BETA]
        )
        client.beta.messages.count_tokens(model="to-anthropic", messages=CHAT, betas=[BETA])
    for path in ("/v1/messages", "/v1/messages/count_tokens"):
        betas = upstream_reset.last_request(path).headers["anthropic-beta"].split(",")
        assert BETA in betas


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/messages/count_tokens"])
def test_the_beta_query_reaches_anthropic_upstreams(
    gw: ServedGateway, upstream_reset: MockUpstream, path: str
) -> None:
    """Anthropic SDKs before 1.0 send their beta client's requests to ``...?beta=true``."""
    body = {"model": "to-anthropic", "max_tokens": 16, "messages": CHAT}
    headers = {"anthropic-version": "2023-06-01", "anthropic-beta": BETA, "x-api-key": "k"}
    response = httpx.post(f"{gw.url}{path}?beta=true", json=body, headers=headers)
    assert response.status_code == 200, response.text
    sent = upstream_reset.last_request(path)
    assert (sent.query, sent.headers["anthropic-beta"]) == ("beta=true", BETA)


def test_plain_requests_get_no_beta_query(gw: ServedGateway, upstream_reset: MockUpstream) -> None:
    with anthropic.Anthropic(base_url=gw.url, api_key="k", max_retries=0) as client:
        client.messages.create(model="to-anthropic", max_tokens=16, messages=CHAT)
    assert upstream_reset.last_request("/v1/messages").query == ""


def test_anthropic_beta_does_not_reach_an_openai_upstream(
    gw: ServedGateway, upstream_reset: MockUpstream
) -> None:
    body = {"model": "to-openai", "max_tokens": 16, "messages": CHAT}
    headers = {"anthropic-version": "2023-06-01", "anthropic-beta": BETA}
    assert httpx.post(f"{gw.url}/v1/messages?beta=true", json=body, headers=headers).is_success
    sent = upstream_reset.last_request("/v1/chat/completions")
    assert sent.query == ""
    assert not any(name.startswith("anthropic-") for name in sent.headers)
