"""Settings refuse unsafe combinations; secrets have no working production defaults."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

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


def test_every_secret_can_come_from_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:

    secrets = [n for n, f in Settings.model_fields.items() if f.annotation == SecretStr | None]
    # the DSNs, the role passwords, the analyst key and the HMAC key: none may be missed
    assert {"database_url", "analyst_api_key", "audit_hmac_key", "owner_password"} <= set(secrets)
    folder = tmp_path
    for name in secrets:
        path = folder / name
        path.write_text(f"{name}-from-file-0123456789\n")  # as `echo ... > file` writes it
        monkeypatch.setenv(f"INFERWATCH_{name.upper()}_FILE", str(path))
    s = Settings()
    for name in secrets:
        value = getattr(s, name)
        assert value is not None, name
        assert value.get_secret_value() == f"{name}-from-file-0123456789"
    # a non-secret field has no _FILE variant
    (folder / "port").write_text("9999")
    monkeypatch.setenv("INFERWATCH_PORT_FILE", str(folder / "port"))
    assert Settings().port == 8000


def test_a_secret_set_twice_or_from_a_missing_file_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "key"
    path.write_text("analyst-key-0123456789")
    monkeypatch.setenv("INFERWATCH_ANALYST_API_KEY_FILE", str(path))
    monkeypatch.setenv("INFERWATCH_ANALYST_API_KEY", "another-key-0123456789")
    with pytest.raises(ValueError, match="both INFERWATCH_ANALYST_API_KEY and"):
        Settings()
    monkeypatch.delenv("INFERWATCH_ANALYST_API_KEY")
    monkeypatch.setenv("INFERWATCH_ANALYST_API_KEY_FILE", str(path.with_name("absent")))
    with pytest.raises(ValueError, match="cannot read"):
        Settings()
    # the file's value passes the same production checks as the variable's
    path.write_text("changeme\n")
    monkeypatch.setenv("INFERWATCH_ANALYST_API_KEY_FILE", str(path))
    with pytest.raises(ValueError, match="placeholder"):
        Settings(environment="production")
