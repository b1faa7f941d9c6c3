"""Settings refuse unsafe combinations; secrets have no working production defaults."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from inferwatch.settings import Settings


def test_defaults_need_no_configuration() -> None:
    s = Settings()
    assert s.database_url is None
    assert s.analyst_api_key is None
    assert s.inject_latency_s == 0


def test_latency_injection_is_refused_outside_dev_and_test() -> None:
    assert Settings(environment="test", inject_latency_s=0.1).inject_latency_s == 0.1
    with pytest.raises(ValidationError, match="test-only"):
        Settings(environment="production", inject_latency_s=0.1)


@pytest.mark.parametrize("environment", ["staging", "production"])
def test_no_http_instrumentation_is_a_benchmark_switch_refused_outside_dev_and_test(
    environment: str,
) -> None:
    for allowed in ("development", "test"):
        assert (
            Settings(environment=allowed, http_instrumentation="none").http_instrumentation
            == "none"
        )
    with pytest.raises(ValidationError, match="benchmark switch"):
        Settings(environment=environment, http_instrumentation="none")
    assert Settings(environment=environment).http_instrumentation == "inferwatch"


def test_placeholder_secrets_are_refused_in_production() -> None:
    with pytest.raises(ValidationError, match="placeholder"):
        Settings(environment="production", analyst_api_key="changeme")
    with pytest.raises(ValidationError, match="development password"):
        Settings(
            environment="production",
            database_url="postgresql://inferwatch_writer:password@db/inferwatch",
        )
    ok = Settings(environment="production", analyst_api_key="k" * 32)
    assert ok.analyst_api_key is not None


def test_hash_privacy_needs_a_key() -> None:
    with pytest.raises(ValidationError, match="HMAC"):
        Settings(audit_privacy={"amount": "hash"})
