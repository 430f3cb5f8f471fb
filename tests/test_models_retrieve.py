"""``GET /v1/models/{id}`` through both official SDKs against a served Interlock.

A name answers when it resolves (exact name, alias, glob alias) to a model the caller's key may
use; otherwise the SDK raises its own ``NotFoundError`` with the error in its API's shape.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator

import anthropic
import httpx
import openai
import pytest

from tests.served import ServedGateway


def _hash(key: str, salt: str = "0123456789abcdef") -> str:
    return f"sha256:{salt}:{hashlib.sha256((salt + key).encode()).hexdigest()}"


CONFIG = {
    "version": 1,
    "upstreams": {"local": {"kind": "mock"}},
    "models": {
        "gpt-4o": {"aliases": ["gpt4o", "gpt-4o-*"], "targets": [{"upstream": "local"}]},
        "claude-sonnet": {"targets": [{"upstream": "local"}]},
        "meta/llama-3": {"targets": [{"upstream": "local"}]},
        "demo": {"targets": [{"upstream": "local"}]},
    },
    "auth": {
        "required": True,
        "accept": ["bearer", "x-api-key"],
        "keys": [
            {"id": "all", "hash": _hash("il-all")},
            {"id": "narrow", "hash": _hash("il-narrow"), "models": ["demo"]},
        ],
    },
}


@pytest.fixture(scope="module")
def gw() -> Iterator[ServedGateway]:
    with ServedGateway(json.dumps(CONFIG)) as gateway:
        yield gateway


def _openai(gw: ServedGateway, key: str = "il-all") -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)


def _anthropic(gw: ServedGateway, key: str = "il-all") -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key=key, max_retries=0)


@pytest.mark.parametrize(
    "name", ["gpt-4o", "gpt4o", "gpt-4o-2024-08-06", "claude-sonnet", "meta/llama-3"]
)
def test_openai_sdk_retrieves_names_aliases_and_globs(gw: ServedGateway, name: str) -> None:
    with _openai(gw) as client:
        model = client.models.retrieve(name)
    assert (model.id, model.object, model.owned_by) == (name, "model", "interlock")


@pytest.mark.parametrize("name", ["claude-sonnet", "gpt4o", "meta/llama-3"])
def test_anthropic_sdk_retrieves_models(gw: ServedGateway, name: str) -> None:
    with _anthropic(gw) as client:
        model = client.models.retrieve(name)
    assert (model.id, model.type, model.display_name) == (name, "model", name)
    assert model.created_at.year == 1970


def test_every_listed_model_can_be_retrieved(gw: ServedGateway) -> None:
    with _openai(gw) as client:
        listed = [m.id for m in client.models.list()]
        assert listed and all(client.models.retrieve(name).id == name for name in listed)


def test_unknown_model_is_a_404_in_the_openai_shape(gw: ServedGateway) -> None:
    with _openai(gw) as client, pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("no-such-model")
    assert caught.value.code == "model_not_found"
    assert caught.value.param == "model"
    assert "no-such-model" in caught.value.message


def test_unknown_model_is_a_404_in_the_anthropic_shape(gw: ServedGateway) -> None:
    with _anthropic(gw) as client, pytest.raises(anthropic.NotFoundError) as caught:
        client.models.retrieve("no-such-model")
    assert caught.value.body == {
        "type": "error",
        "error": {"type": "not_found_error", "message": "the model 'no-such-model' does not exist"},
    }


def test_a_key_only_sees_the_models_it_may_use(gw: ServedGateway) -> None:
    with _openai(gw, "il-narrow") as client:
        assert client.models.retrieve("demo").id == "demo"
        with pytest.raises(openai.NotFoundError):
            client.models.retrieve("gpt-4o")  # exists, but not for this key: not even named
    with _anthropic(gw, "il-narrow") as client, pytest.raises(anthropic.NotFoundError):
        client.models.retrieve("claude-sonnet")


def test_a_missing_or_wrong_key_is_a_401_in_each_shape(gw: ServedGateway) -> None:
    response = httpx.get(f"{gw.url}/v1/models/gpt-4o")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"
    with _anthropic(gw, "il-wrong") as client, pytest.raises(anthropic.AuthenticationError) as c:
        client.models.retrieve("gpt-4o")
    assert c.value.body == {
        "type": "error",
        "error": {"type": "authentication_error", "message": "invalid API key"},
    }


def test_retrieve_reads_the_live_table(gw: ServedGateway) -> None:
    renamed = {**CONFIG, "models": {"fresh": {"targets": [{"upstream": "local"}]}}}
    gw.swap(json.dumps(renamed))
    try:
        with _openai(gw) as client:
            assert client.models.retrieve("fresh").id == "fresh"
            with pytest.raises(openai.NotFoundError):
                client.models.retrieve("gpt-4o")
    finally:
        gw.swap(json.dumps(CONFIG))
