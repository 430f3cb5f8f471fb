"""The JSON Schema of the config language (schemas/interlock.schema.json).

It must be a valid Draft 2020-12 schema, reject unknown keys everywhere, explain every property,
accept every example in the README's config section and examples/, and reject broken documents
with the expected keyword at the expected JSON path (the compiler reports `schema.<keyword>`).
"""

from __future__ import annotations

import datetime as dt
import json
import re
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match
from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_PATH = ROOT / "schemas" / "interlock.schema.json"
DOCS_PATH = ROOT / "README.md"
SCHEMA: dict[str, Any] = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
VALIDATOR = Draft202012Validator(SCHEMA)

# Keywords whose subschema only constrains (help text lives in the base schema's `properties`).
CONDITIONAL = ("if", "then", "else", "not")
SUBSCHEMA = ("additionalProperties", "items", "propertyNames", "contains")
SUBSCHEMA_LISTS = ("allOf", "anyOf", "oneOf", "prefixItems")
SUBSCHEMA_MAPS = ("properties", "patternProperties", "$defs", "dependentSchemas")


def load_yaml(text: str) -> Any:
    """YAML -> JSON data model: YAML timestamps become ISO strings, as JSON would hold them."""
    return to_json_data(YAML(typ="safe").load(text))


def to_json_data(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: to_json_data(item) for key, item in value.items()}
    if isinstance(value, list):
        return [to_json_data(item) for item in value]
    if isinstance(value, dt.date | dt.datetime):
        return value.isoformat()
    return value


def errors_of(document: Any) -> list[ValidationError]:
    return list(VALIDATOR.iter_errors(document))


def describe(errors: list[ValidationError]) -> str:
    return "\n".join(f"{e.json_path}: {e.validator}: {e.message}" for e in errors)


def walk(
    schema: Any, where: str = "#", conditional: bool = False
) -> Iterator[tuple[str, Any, bool]]:
    """Every subschema with its location, and whether it sits under if/then/else/not."""
    yield where, schema, conditional
    if not isinstance(schema, dict):
        return
    for key in CONDITIONAL:
        if key in schema:
            yield from walk(schema[key], f"{where}/{key}", True)
    for key in SUBSCHEMA:
        if isinstance(schema.get(key), dict):
            yield from walk(schema[key], f"{where}/{key}", conditional)
    for key in SUBSCHEMA_LISTS:
        for index, item in enumerate(schema.get(key, ())):
            yield from walk(item, f"{where}/{key}/{index}", conditional)
    for key in SUBSCHEMA_MAPS:
        for name, item in schema.get(key, {}).items():
            yield from walk(item, f"{where}/{key}/{name}", conditional)


def docs_yaml_blocks() -> list[str]:
    """The yaml blocks of the README's config-language section."""
    text = DOCS_PATH.read_text(encoding="utf-8")
    text = text.split("## The config language", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^```yaml\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE)


def docs_snippet(block: str) -> dict[str, Any]:
    """One yaml snippet of the README's config section as a config of its own.

    NOTE: the routes snippet lists every action key in one action, `reject` included, although
    "`reject` excludes the other action keys except `headers`". Its `reject` is moved to a route of
    its own (with the same headers) so both halves are checked.
    """
    document: dict[str, Any] = {"version": 1, **load_yaml(block)}
    routes = document.get("routes", [])
    for route in list(routes):
        action = route.get("action", {})
        if "reject" in action and set(action) - {"reject", "headers"}:
            rejecting = {"reject": action.pop("reject")}
            if "headers" in action:
                rejecting["headers"] = action["headers"]
            routes.append({"name": f"{route['name']}-reject", "match": {}, "action": rejecting})
    return document


def docs_document() -> dict[str, Any]:
    """All yaml snippets of the README's config section merged into one config."""
    merged: dict[str, Any] = {}
    for block in docs_yaml_blocks():
        part = docs_snippet(block)
        overlap = (set(merged) & set(part)) - {"version", "routes"}
        assert not overlap, f"docs define {overlap} twice"
        routes = [*merged.get("routes", []), *part.pop("routes", [])]
        merged.update(part)
        if routes:
            merged["routes"] = routes
    return merged


# ---------------------------------------------------------------- the schema itself


def test_schema_is_valid_draft_2020_12() -> None:
    Draft202012Validator.check_schema(SCHEMA)
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert SCHEMA["$id"] == "https://interlock.dev/schemas/interlock.schema.json"
    assert SCHEMA["title"]


def is_object_schema(schema: Any, conditional: bool) -> bool:
    if not isinstance(schema, dict):
        return False
    types = schema.get("type", [])
    types = [types] if isinstance(types, str) else types
    return "object" in types or ("properties" in schema and not conditional)


def test_every_object_schema_sets_additional_properties() -> None:
    objects = [
        (where, schema)
        for where, schema, conditional in walk(SCHEMA)
        if is_object_schema(schema, conditional)
    ]
    assert len(objects) > 50, "the walk should reach every section"
    missing = [where for where, schema in objects if "additionalProperties" not in schema]
    assert not missing, missing


def test_every_property_and_definition_has_a_description() -> None:
    undescribed = [
        f"{where}/properties/{name}"
        for where, schema, conditional in walk(SCHEMA)
        if isinstance(schema, dict) and not conditional
        for name, prop in schema.get("properties", {}).items()
        if not (isinstance(prop, dict) and str(prop.get("description", "")).strip())
    ]
    undescribed += [
        f"#/$defs/{name}"
        for name, definition in SCHEMA["$defs"].items()
        if not str(definition.get("description", "")).strip()
    ]
    assert not undescribed, undescribed


def test_conditional_blocks_name_only_declared_properties() -> None:
    """then/else blocks that allow-list keys name only keys the base schema declares (with help)."""
    declared = {
        name
        for _, schema, conditional in walk(SCHEMA)
        if isinstance(schema, dict) and not conditional
        for name in schema.get("properties", {})
    }
    stray = [
        f"{where}/{name}"
        for where, schema, conditional in walk(SCHEMA)
        if conditional and isinstance(schema, dict)
        for name in schema.get("properties", {})
        if name not in declared
    ]
    assert not stray, stray


def test_every_ref_resolves_and_every_definition_is_used() -> None:
    refs = {
        schema["$ref"]
        for _, schema, _ in walk(SCHEMA)
        if isinstance(schema, dict) and "$ref" in schema
    }
    defined = {f"#/$defs/{name}" for name in SCHEMA["$defs"]}
    assert refs <= defined, refs - defined
    assert defined <= refs, defined - refs


def test_patterns_are_portable_to_editor_regex_engines() -> None:
    """yaml-language-server evaluates patterns as ECMAScript: no Python-only syntax."""
    python_only = re.compile(r"\(\?[aiLmsux]|\(\?P<|\\[AZz]")
    patterns = [
        schema["pattern"]
        for _, schema, _ in walk(SCHEMA)
        if isinstance(schema, dict) and isinstance(schema.get("pattern"), str)
    ]
    assert patterns
    assert not [p for p in patterns if python_only.search(p)]


def test_packaged_schema_link_points_at_the_schema() -> None:
    link = ROOT / "compiler" / "schema" / "interlock.schema.json"
    assert link.is_symlink(), "the packaged schema must be the same file as schemas/"
    assert link.resolve() == SCHEMA_PATH


# ---------------------------------------------------------------- valid documents


def test_docs_snippets_validate_as_one_config() -> None:
    document = docs_document()
    assert set(document) == set(SCHEMA["properties"]), "docs should show every section"
    errors = errors_of(document)
    assert not errors, describe(errors)


@pytest.mark.parametrize("index", range(len(docs_yaml_blocks())))
def test_each_docs_snippet_validates_alone(index: int) -> None:
    document = docs_snippet(docs_yaml_blocks()[index])
    errors = errors_of(document)
    assert not errors, describe(errors)


VALID = {
    "minimal": "",
    "mock-only": """
        upstreams:
          demo: {kind: mock}
        models:
          demo: {targets: [{upstream: demo}]}
    """,
    "oauth-client-id": """
        upstreams:
          giga:
            kind: gigachat
            base_url: https://gigachat.example/api/v1
            oauth:
              token_url: https://ngw.example:9443/api/v2/oauth
              client_id: my-client
              client_secret: {file: /run/secrets/giga}
              scope: GIGACHAT_API_CORP
    """,
    "env-substituted-strings": """
        server: {listen: ["${HOST:-0.0.0.0}:8080"]}
        upstreams:
          up: {kind: openai-compatible, base_url: "${VLLM_URL}", api_key: "${VLLM_KEY}"}
        admin: {enabled: true, key_hash: "${ADMIN_KEY_HASH}"}
    """,
    "matchers": """
        routes:
          - name: any-of
            match:
              model: [gpt-4o, gpt-4o-mini]
              headers: {X-Stage: {regex: "^plan"}, x-debug: {present: false}}
              body: [{path: "$.n", in: [1, 2]}, {path: "$.user", regex: "^svc-"}]
              prompt_chars: {gt: 10, lte: 100000}
              text: {regex: "secret", in: all}
            action: {cache: false, limits: []}
          - name: by-glob
            match: {model: {glob: "claude-*"}, stream: true}
            action: {default_model: claude-haiku}
          - name: by-regex
            match: {model: {regex: "^o[0-9]"}}
            action: {reject: {status: 400}, headers: [strip]}
          - name: catch-all
            match: {}
            action: {}
    """,
    "stores": """
        auth:
          store: {kind: postgres, url: {env: DATABASE_URL}}
          keys: [{id: k1, hash: "sha256:ab:cd", expires: 2027-01-31}]
        usage: {store: {kind: postgres, url: {env: DATABASE_URL}}}
        limits: {backend: {kind: redis, url: "redis://cache:6379/0"}}
        cache: {backend: {kind: redis, url: {env: REDIS_URL}}}
    """,
    "header-policies": """
        policies:
          headers:
            deny-debug:
              request:
                mode: denylist
                deny: ["x-debug-*"]
                force: {authorization: {env: UPSTREAM_TOKEN}}
            strip:
              response: {drop: [server]}
          transforms:
            by-path:
              request:
                - op: regex_replace
                  pattern: "\\\\d{16}"
                  replacement: "[card]"
                  paths: ["$.metadata.note"]
                - op: set
                  path: "$.metadata"
                  value: null
    """,
    "server-cors-off-headers": """
        server:
          listen: ["[::1]:8080", ":9090"]
          cors: {allow_origins: ["*"]}
          response_headers: {route: null, version: null}
    """,
}


@pytest.mark.parametrize("name", sorted(VALID))
def test_valid_documents(name: str) -> None:
    document = load_yaml("version: 1\n" + textwrap.dedent(VALID[name]))
    errors = errors_of(document)
    assert not errors, describe(errors)


@pytest.mark.parametrize(
    "path",
    sorted(p for p in (ROOT / "examples").glob("*.yaml") if not p.name.endswith(".tests.yaml")),
    ids=lambda path: path.name,
)
def test_examples_validate(path: Path) -> None:
    errors = errors_of(load_yaml(path.read_text(encoding="utf-8")))
    assert not errors, describe(errors)


# ---------------------------------------------------------------- invalid documents

OPENAI = "upstreams: {up: {kind: openai, base_url: 'https://api.openai.com/v1'}}\n"
ROUTE = "routes:\n  - name: r\n    match: {}\n"

# name -> (document after `version: 1`, expected keyword, expected JSON path of the best error)
INVALID = {
    "unknown-top-level-key": ("servr: {}", "additionalProperties", "$"),
    "missing-version": ("__no_version__", "required", "$"),
    "wrong-version": ("__version_2__", "const", "$.version"),
    "listen-not-a-list": ("server: {listen: '127.0.0.1:8080'}", "type", "$.server.listen"),
    "listen-without-port": ("server: {listen: [localhost]}", "pattern", "$.server.listen[0]"),
    "body-limit-as-string": ("server: {max_body_bytes: 10MB}", "type", "$.server.max_body_bytes"),
    "cors-credentials-with-wildcard": (
        "server: {cors: {allow_origins: ['*'], allow_credentials: true}}",
        "not",
        "$.server.cors.allow_origins",
    ),
    "bad-upstream-kind": (
        "upstreams: {up: {kind: azure, base_url: 'https://x'}}",
        "enum",
        "$.upstreams.up.kind",
    ),
    "openai-without-base-url": ("upstreams: {up: {kind: openai}}", "required", "$.upstreams.up"),
    "upstream-without-kind": (
        "upstreams: {up: {base_url: 'https://x'}}",
        "required",
        "$.upstreams.up",
    ),
    "mock-with-base-url": (
        "upstreams: {up: {kind: mock, base_url: 'https://x'}}",
        "additionalProperties",
        "$.upstreams.up",
    ),
    "oauth-on-openai": (
        "upstreams: {up: {kind: openai, base_url: 'https://x', "
        "oauth: {token_url: 'https://t', credentials: c, scope: s}}}",
        "additionalProperties",
        "$.upstreams.up",
    ),
    "mock-block-on-ollama": (
        "upstreams: {up: {kind: ollama, base_url: 'http://h:11434', mock: {}}}",
        "additionalProperties",
        "$.upstreams.up",
    ),
    "base-url-without-scheme": (
        "upstreams: {up: {kind: openai, base_url: api.openai.com}}",
        "pattern",
        "$.upstreams.up.base_url",
    ),
    "unknown-timeout-key": (
        "upstreams: {up: {kind: mock, timeouts: {conect_s: 5}}}",
        "additionalProperties",
        "$.upstreams.up.timeouts",
    ),
    "zero-timeout": (
        "upstreams: {up: {kind: mock, timeouts: {connect_s: 0}}}",
        "exclusiveMinimum",
        "$.upstreams.up.timeouts.connect_s",
    ),
    "zero-retry-attempts": (
        "upstreams: {up: {kind: mock, retry: {attempts: 0}}}",
        "minimum",
        "$.upstreams.up.retry.attempts",
    ),
    "bad-retry-error-class": (
        "upstreams: {up: {kind: mock, retry: {on_errors: [dns]}}}",
        "enum",
        "$.upstreams.up.retry.on_errors[0]",
    ),
    "retry-on-success-status": (
        "upstreams: {up: {kind: mock, retry: {on_status: [200]}}}",
        "minimum",
        "$.upstreams.up.retry.on_status[0]",
    ),
    "mock-failure-rate-above-one": (
        "upstreams: {up: {kind: mock, mock: {fail: {rate: 1.5}}}}",
        "maximum",
        "$.upstreams.up.mock.fail.rate",
    ),
    "secret-with-env-and-file": (
        "upstreams: {up: {kind: openai, base_url: 'https://x', api_key: {env: K, file: /k}}}",
        "maxProperties",
        "$.upstreams.up.api_key",
    ),
    "secret-env-not-a-name": (
        "upstreams: {up: {kind: openai, base_url: 'https://x', api_key: {env: 'MY KEY'}}}",
        "pattern",
        "$.upstreams.up.api_key.env",
    ),
    "oauth-credentials-and-client-id": (
        "upstreams: {up: {kind: gigachat, base_url: 'https://x', "
        "oauth: {token_url: 'https://t', credentials: c, client_id: i, scope: s}}}",
        "additionalProperties",
        "$.upstreams.up.oauth",
    ),
    "bad-upstream-name": (
        "upstreams: {'my upstream': {kind: mock}}",
        "pattern",
        "$.upstreams",
    ),
    "bad-strategy": (
        "models: {m: {strategy: random, targets: [{upstream: up}]}}",
        "enum",
        "$.models.m.strategy",
    ),
    "no-targets": ("models: {m: {targets: []}}", "minItems", "$.models.m.targets"),
    "bad-fallback-class": (
        "models: {m: {targets: [{upstream: up}], fallback: {models: [n], on: [oops]}}}",
        "enum",
        "$.models.m.fallback.on[0]",
    ),
    "bad-capability": (
        "models: {m: {targets: [{upstream: up}], capabilities: [audio]}}",
        "enum",
        "$.models.m.capabilities[0]",
    ),
    "route-without-name": (
        "routes: [{match: {}, action: {}}]",
        "required",
        "$.routes[0]",
    ),
    "bad-api": (
        ROUTE.replace("{}", "{api: [openai.assistants]}") + "    action: {}",
        "enum",
        "$.routes[0].match.api[0]",
    ),
    # NOTE: a value matching no branch's type fails the whole anyOf (the compiler reports
    # schema.anyOf and can list the branches' types); a value of a branch's type fails inside it.
    "model-matcher-number": (
        ROUTE.replace("{}", "{model: 42}") + "    action: {}",
        "anyOf",
        "$.routes[0].match.model",
    ),
    "model-matcher-empty-list": (
        ROUTE.replace("{}", "{model: []}") + "    action: {}",
        "minItems",
        "$.routes[0].match.model",
    ),
    "header-matcher-number": (
        ROUTE.replace("{}", "{headers: {x-stage: 2}}") + "    action: {}",
        "anyOf",
        "$.routes[0].match.headers['x-stage']",
    ),
    "header-matcher-regex-and-present": (
        ROUTE.replace("{}", "{headers: {x-stage: {regex: a, present: true}}}") + "    action: {}",
        "maxProperties",
        "$.routes[0].match.headers['x-stage']",
    ),
    "response-header-number": (
        "server: {response_headers: {route: 1}}",
        "type",
        "$.server.response_headers.route",
    ),
    "response-header-bad-name": (
        "server: {response_headers: {route: 'x route'}}",
        "pattern",
        "$.server.response_headers.route",
    ),
    "cache-number": (
        ROUTE + "    action: {cache: 1}",
        "type",
        "$.routes[0].action.cache",
    ),
    "model-matcher-unknown-key": (
        ROUTE.replace("{}", "{model: {prefix: gpt}}") + "    action: {}",
        "additionalProperties",
        "$.routes[0].match.model",
    ),
    "header-matcher-bad-name": (
        ROUTE.replace("{}", "{headers: {'x stage': plan}}") + "    action: {}",
        "pattern",
        "$.routes[0].match.headers",
    ),
    "body-predicate-two-operators": (
        ROUTE.replace("{}", "{body: [{path: $.n, gt: 1, lt: 5}]}") + "    action: {}",
        "maxProperties",
        "$.routes[0].match.body[0]",
    ),
    "body-predicate-no-operator": (
        ROUTE.replace("{}", "{body: [{path: $.n}]}") + "    action: {}",
        "minProperties",
        "$.routes[0].match.body[0]",
    ),
    "text-in-everything": (
        ROUTE.replace("{}", "{text: {regex: x, in: everything}}") + "    action: {}",
        "enum",
        "$.routes[0].match.text.in",
    ),
    "reject-with-model": (
        ROUTE + "    action: {reject: {status: 403}, model: gpt-4o}",
        "additionalProperties",
        "$.routes[0].action",
    ),
    "reject-with-success-status": (
        ROUTE + "    action: {reject: {status: 200}}",
        "minimum",
        "$.routes[0].action.reject.status",
    ),
    "cache-true": (
        ROUTE + "    action: {cache: true}",
        "const",
        "$.routes[0].action.cache",
    ),
    "bad-transform-op": (
        "policies: {transforms: {t: {request: [{op: rename, path: $.a}]}}}",
        "enum",
        "$.policies.transforms.t.request[0].op",
    ),
    "regex-replace-without-pattern": (
        "policies: {transforms: {t: {request: [{op: regex_replace, replacement: x}]}}}",
        "required",
        "$.policies.transforms.t.request[0]",
    ),
    "drop-with-value": (
        "policies: {transforms: {t: {request: [{op: drop, path: $.a, value: 1}]}}}",
        "additionalProperties",
        "$.policies.transforms.t.request[0]",
    ),
    "regex-replace-target-and-paths": (
        "policies: {transforms: {t: {response: [{op: regex_replace, pattern: a, "
        "replacement: b, target: text, paths: [$.a]}]}}}",
        "additionalProperties",
        "$.policies.transforms.t.response[0]",
    ),
    "bad-header-mode": (
        "policies: {headers: {h: {request: {mode: block}}}}",
        "enum",
        "$.policies.headers.h.request.mode",
    ),
    "allow-without-allowlist-mode": (
        "policies: {headers: {h: {request: {mode: passthrough, allow: [accept]}}}}",
        "const",
        "$.policies.headers.h.request.mode",
    ),
    "bad-forced-header-name": (
        "policies: {headers: {h: {request: {force: {'x team': a}}}}}",
        "pattern",
        "$.policies.headers.h.request.force",
    ),
    "bad-auth-accept": ("auth: {accept: [basic]}", "enum", "$.auth.accept[0]"),
    "key-without-hash": ("auth: {keys: [{id: k}]}", "required", "$.auth.keys[0]"),
    "key-hash-not-hashed": (
        "auth: {keys: [{id: k, hash: sk-plaintext}]}",
        "pattern",
        "$.auth.keys[0].hash",
    ),
    "bad-limit-scope": (
        "limits: {policies: {p: {scope: team}}}",
        "enum",
        "$.limits.policies.p.scope",
    ),
    "negative-rpm": ("limits: {policies: {p: {rpm: -1}}}", "minimum", "$.limits.policies.p.rpm"),
    "sqlite-backend-without-path": (
        "limits: {backend: {kind: sqlite}}",
        "required",
        "$.limits.backend",
    ),
    "memory-backend-with-url": (
        "limits: {backend: {kind: memory, url: 'redis://x'}}",
        "additionalProperties",
        "$.limits.backend",
    ),
    "sqlite-cache-backend": ("cache: {backend: {kind: sqlite}}", "enum", "$.cache.backend.kind"),
    "bad-log-format": (
        "observability: {access_log: {format: xml}}",
        "enum",
        "$.observability.access_log.format",
    ),
    "admin-enabled-without-key": ("admin: {enabled: true}", "required", "$.admin"),
}


def invalid_document(text: str) -> Any:
    if text == "__no_version__":
        return {"server": {}}
    if text == "__version_2__":
        return {"version": 2}
    return load_yaml("version: 1\n" + OPENAI * text.startswith("routes") + text)


@pytest.mark.parametrize("name", sorted(INVALID))
def test_invalid_documents(name: str) -> None:
    text, keyword, json_path = INVALID[name]
    errors = errors_of(invalid_document(text))
    assert len(errors) == 1, describe(errors)
    error = best_match(errors)
    assert (error.validator, error.json_path) == (keyword, json_path), describe([error])
