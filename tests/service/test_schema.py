"""The served OpenAPI schema, fuzzed by schemathesis against a real server: no response >= 500, every status,
content type and body as the schema documents them. Bounded: a few examples per operation, derandomized."""

from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from dnd.service.settings import Settings

from .test_server import serving

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
EXAMPLES = 6  # per operation, generation mode, media type and path parameter choice


@pytest.fixture(scope="module")
def api_schema(bundle: Path):
    with serving(Settings(model_dir=bundle, threads=1, api_key="k", max_images=4, body_limit=100_000)) as port:
        yield schemathesis.openapi.from_url(f"http://127.0.0.1:{port}/openapi.json")


def _strategies(op, name: str):
    """Per operation: schema-valid and schema-violating requests, for every request body media type, with the served
    model's name in {name} half of the time (a random name only ever reaches the 404 branch)."""
    body = op.definition.raw.get("requestBody", {}).get("content", {})
    media = list(body) or [None]
    params = [None, {"name": name}] if "{name}" in op.path else [None]
    for mode in GenerationMode:
        for mt in media:
            for pp in params:
                yield f"{mode.value} {mt or ''} {pp or ''}", op.as_strategy(mode, media_type=mt, path_parameters=pp)


def test_every_operation_answers_as_documented(api_schema) -> None:
    failures, ran = [], []
    for result in api_schema.get_all_operations():
        op = result.ok()
        for label, strategy in _strategies(op, "tiny"):

            @given(case=strategy)
            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                suppress_health_check=list(HealthCheck),
                derandomize=True,
                database=None,
            )
            def run(case) -> None:
                case.call_and_validate(checks=CHECKS)

            try:
                run()
            except Unsatisfiable:  # nothing to violate (no parameters, no body): the positive mode covers it
                continue
            except Exception as e:
                failures.append(f"{op.label} [{label}]: {e}")
            ran.append(op.label)
    assert len(set(ran)) >= 13 and not failures, "\n\n".join(failures)


def test_request_bodies_and_error_responses_are_documented(client) -> None:
    spec = client.get("/openapi.json").json()
    predict = spec["paths"]["/predict"]["post"]
    assert {"image/png", "multipart/form-data", "application/json"} <= set(predict["requestBody"]["content"])
    assert {"400", "413", "415", "422", "503"} <= set(predict["responses"])
    assert "application/json" in spec["paths"]["/v2/models/{name}/infer"]["post"]["requestBody"]["content"]
    assert set(spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == {"text/plain"}
    assert {"401", "404"} <= set(spec["paths"]["/admin/reload"]["post"]["responses"])
