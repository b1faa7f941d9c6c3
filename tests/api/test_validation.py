"""Every class of bad input gets a 4xx naming each bad field; nothing invalid is recorded."""

from __future__ import annotations

from typing import Any

import pytest

from inferwatch.telemetry import instruments as names
from tests.fixtures.api import Harness, points


def fields(resp: Any) -> dict[str, str]:
    return {d["field"]: d["problem"] for d in resp.json()["detail"]}


def post(h: Harness, features: dict[str, Any], **extra: Any) -> Any:
    return h.client.post("/v1/predict", json={"features": features, **extra})


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("amount", "12.5", "must be a number, got string"),
        ("amount", None, "must be a number, got null"),
        ("amount", True, "must be a number, got boolean"),
        ("amount", [1], "must be a number, got array"),
        ("amount", -1, "must be >= 0"),
        ("amount", 1e12, "must be <= 1e+06"),
        ("hour_of_day", 24, "must be <= 23"),
        ("hour_of_day", 3.5, "must be an integer"),
        ("card_present", 1, "must be a boolean, got number"),
        ("card_present", "true", "must be a boolean, got string"),
        ("merchant_category", "casino", "unknown category 'casino'"),
        ("merchant_category", 3, "must be a string, got number"),
        ("merchant_category", "x" * 5000, "must be at most 128 characters"),
        ("merchant_category", "gro\x00cery", "must not contain NUL"),
        ("txn_count_1h", 10**30, "must be <= 10000"),
    ],
)
def test_bad_feature_value_is_named(
    harness: Harness, valid_features: dict[str, Any], field: str, value: Any, problem: str
) -> None:
    resp = post(harness, {**valid_features, field: value})
    assert resp.status_code == 422, resp.text
    got = fields(resp)
    assert list(got) == [f"features.{field}"]
    assert problem in got[f"features.{field}"]
    assert harness.audit.records == []


def test_missing_and_unknown_features_all_reported(
    harness: Harness, valid_features: dict[str, Any]
) -> None:
    bad = {k: v for k, v in valid_features.items() if k not in ("amount", "channel")}
    bad["favourite_colour"] = "blue"
    got = fields(post(harness, bad))
    assert got == {
        "features.favourite_colour": "unknown feature",
        "features.amount": "required",
        "features.channel": "required",
    }


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e999"])
def test_non_finite_numbers_are_refused_by_field(
    harness: Harness, valid_features: dict[str, Any], literal: bytes
) -> None:
    import orjson

    raw = orjson.dumps({"features": {**valid_features, "amount": 12345.5}})
    raw = raw.replace(b"12345.5", literal)
    resp = harness.client.post(
        "/v1/predict", content=raw, headers={"content-type": "application/json"}
    )
    assert resp.status_code == 422, resp.text
    assert "finite" in fields(resp)["features.amount"]


def test_entity_and_request_id_are_checked(
    harness: Harness, valid_features: dict[str, Any]
) -> None:
    got = fields(
        post(
            harness,
            valid_features,
            entity={"type": "", "id": "a\x00b", "x": 1},
            request_id="r" * 500,
            extra=1,
        )
    )
    assert got == {
        "extra": "unknown field",
        "entity.x": "unknown field",
        "entity.type": "must not be empty",
        "entity.id": "must not contain NUL characters",
        "request_id": "must be at most 128 characters, got 500",
    }
    got = fields(post(harness, valid_features, entity="acct-1"))
    assert got == {"entity": "must be an object, got string"}


def test_unicode_and_quotes_in_entity_ids_are_accepted_exactly(
    harness: Harness, valid_features: dict[str, Any]
) -> None:
    hostile = 'O\'Brien "quoted" back\\slash ünïcødé 🚀 ; DROP TABLE predictions;--'
    resp = post(harness, valid_features, entity={"type": "account", "id": hostile})
    assert resp.status_code == 200
    assert harness.audit.predictions[0].entity_id == hostile


def test_lone_surrogate_is_refused(harness: Harness, valid_features: dict[str, Any]) -> None:
    import json

    raw = json.dumps({"features": valid_features, "entity": {"type": "a", "id": "\ud800"}})
    resp = harness.client.post(
        "/v1/predict", content=raw, headers={"content-type": "application/json"}
    )
    assert resp.status_code == 422
    assert "lone surrogates" in fields(resp)["entity.id"]


def test_oversized_body_is_413(harness: Harness, valid_features: dict[str, Any]) -> None:
    resp = post(harness, valid_features, request_id="x" * 100_000)
    assert resp.status_code == 413
    assert fields(resp)["body"].startswith("must be at most 65536 bytes")


def test_oversized_chunked_body_is_413_without_content_length(harness: Harness) -> None:
    def chunks() -> Any:
        for _ in range(100):
            yield b" " * 4096

    resp = harness.client.post(
        "/v1/predict", content=chunks(), headers={"content-type": "application/json"}
    )
    assert resp.status_code == 413


def test_malformed_json_wrong_type_and_media_type(harness: Harness) -> None:
    r = harness.client.post(
        "/v1/predict", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 400
    assert "invalid JSON" in fields(r)["body"]
    r = harness.client.post(
        "/v1/predict", content=b"", headers={"content-type": "application/json"}
    )
    assert r.status_code == 400
    r = harness.client.post("/v1/predict", json=[1, 2])
    assert r.status_code == 422
    assert fields(r) == {"body": "must be an object, got array"}
    r = harness.client.post(
        "/v1/predict", content=b"a=1", headers={"content-type": "application/x-www-form-urlencoded"}
    )
    assert r.status_code == 415


def test_batch_limits_and_per_item_paths(harness: Harness, valid_features: dict[str, Any]) -> None:
    limit = harness.client.app.state.runtime.settings.max_batch_size  # type: ignore[attr-defined]
    r = harness.client.post(
        "/v1/predict/batch", json={"instances": [{"features": valid_features}] * (limit + 1)}
    )
    assert r.status_code == 422
    assert fields(r) == {"instances": f"must have at most {limit} items, got {limit + 1}"}
    r = harness.client.post("/v1/predict/batch", json={"instances": []})
    assert r.status_code == 422
    assert fields(r) == {"instances": "must not be empty"}
    r = harness.client.post(
        "/v1/predict/batch",
        json={
            "instances": [
                {"features": valid_features},
                {"features": {**valid_features, "hour_of_day": -1}},
            ]
        },
    )
    assert r.status_code == 422
    assert list(fields(r)) == ["instances[1].features.hour_of_day"]
    assert harness.audit.records == []  # nothing of a rejected batch is recorded
    r = harness.client.post("/v1/predict/batch", json={"items": []})
    assert r.status_code == 422
    assert "instances" in fields(r)


def test_rejections_are_counted_by_reason(harness: Harness, valid_features: dict[str, Any]) -> None:
    post(harness, {**valid_features, "amount": "x"})
    post(harness, {**valid_features, "amount": "x"})
    harness.client.post("/v1/predict", content=b"{", headers={"content-type": "application/json"})
    data = harness.metrics.get_metrics_data()
    by_reason = {
        dict(p.attributes)[names.ATTR_REJECT_REASON]: p.value
        for p in points(data, names.REJECTED_REQUESTS)
    }
    assert by_reason == {"validation": 2, "invalid_json": 1}
    assert points(data, names.PREDICTIONS) == []
