"""Secrets come from the environment or files, never the repository: every tracked file is
scanned for secret-like values.

- credential formats (private keys, cloud and forge tokens, JWTs) in any file, tests too;
- outside tests/: a password in a URL (``scheme://user:password@``) or a literal assigned
  to a secret-named key (``password: hunter2``, ``API_KEY = "..."``), unless it is a
  reference (``${VAR}``, ``$$VAR``, ``$VAR``), a placeholder (``...``, ``<...>``), or code.

tests/ holds the throwaway clusters' test-only passwords (tests/fixtures/pg.py), which
are fine; a credential format there is not.
"""

from __future__ import annotations

import re
import subprocess

from stack.procs import ROOT

# files of hashes, not secrets (every line is a long hex or base64 digest)
SKIP = ("requirements.lock", "go.sum")

FORMATS = {
    "private key": re.compile(r"-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----"),
    "AWS access key": re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    "GitHub token": re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{36}|github_pat_\w{40,})"),
    "Slack token": re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}"),
    "Google API key": re.compile(r"\bAIza[0-9A-Za-z_-]{35}\b"),
    "Stripe key": re.compile(r"\b[sr]k_live_[0-9A-Za-z]{16,}"),
    "JWT": re.compile(r"\beyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}"),
}
URL_PASSWORD = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@'\"]+:([^@\s/'\"]+)@")
SECRET_KEY = r"[\w.-]*(?:password|passwd|secret|api[_-]?key|token|credential)s?"
LITERAL = re.compile(
    rf"(?i)(?<![{{$\w])({SECRET_KEY})[\"']?\s*[:=]\s*(?:[\"']([^\"'\n]+)[\"']|([^\s\"'#,)\]}}]+))"
)


def _is_reference(value: str) -> bool:
    v = value.strip()
    return (
        v.startswith(("$", "<", "...", "&", "*", "{", "[", "("))  # refs, YAML anchors, code
        or v in ("", "None", "null", "~", "true", "false")
        or v.endswith(("...", "_FILE"))
    )


def _is_code(value: str) -> bool:
    """An expression, not a literal: a call, an attribute, an annotation, a name."""
    v = value.strip()
    return bool(re.fullmatch(r"[A-Za-z_][\w.\[\]]*(\(.*)?", v)) and not re.search(r"\d", v)


def findings(path: str, text: str) -> list[str]:
    out = [f"{path}: {name}" for name, rx in FORMATS.items() if rx.search(text)]
    if path.startswith("tests/"):
        return out
    for m in URL_PASSWORD.finditer(text):
        if not _is_reference(m.group(1)):
            out.append(f"{path}: password in a URL: {m.group(0)[:60]}")
    for m in LITERAL.finditer(text):
        quoted, bare = m.group(2), m.group(3)
        value = quoted if quoted is not None else bare
        if _is_reference(value) or (quoted is None and _is_code(value)):
            continue
        if quoted is not None and (" " in value or len(value) < 6):
            continue  # prose or a help text, not a credential
        out.append(f"{path}: {m.group(1)} set to a literal")
    return out


def tracked() -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout
    return [p for p in out.decode().split("\0") if p and not p.endswith(SKIP)]


def test_no_tracked_file_holds_a_secret() -> None:
    bad = []
    for path in tracked():
        try:
            text = (ROOT / path).read_text(encoding="utf-8")
        except (UnicodeDecodeError, FileNotFoundError):
            continue
        bad += findings(path, text)
    assert bad == []


def test_the_scan_finds_planted_secrets() -> None:
    """Each rule fires on what it is for and stays quiet on references and placeholders."""
    planted = {
        # assembled at run time, so that this file does not hold them itself
        "-----BEGIN " + "OPENSSH PRIVATE KEY-----": "private key",
        "aws_key = AKIA" + "IOSFODNN7EXAMPLE": "AWS access key",
        "t: ghp_" + "a1B2" * 9: "GitHub token",
        "db: postgresql://owner:s3cr3t-pw@db/inferwatch": "password in a URL",
        'INFERWATCH_ANALYST_API_KEY="k3y-0123456789abcdef"': "set to a literal",
        "password: hunter2-is-bad": "set to a literal",
    }
    for text, rule in planted.items():
        got = findings("stack/x.yaml", text)
        assert any(rule in f for f in got), (text, got)
    quiet = [
        "dsn: postgresql://owner:${OWNER_PASSWORD}@db/x",
        'url = "postgresql://inferwatch_owner:...@db/inferwatch"',
        "INFERWATCH_OWNER_PASSWORD=... INFERWATCH_WRITER_PASSWORD=...",
        "password_file: /run/secrets/mimir_password",
        "ADMIN_DSN: postgresql://postgres:${POSTGRES_PASSWORD:?export POSTGRES_PASSWORD}@pg/x",
        "x-passwords: &passwords",
        "passwords = {",
        "analyst_api_key: SecretStr | None = None",
        "password=settings.owner_password,",
        "token = otel_context.attach(trace.set_span_in_context(span, parent))",
    ]
    for text in quiet:
        assert findings("stack/x.yaml", text) == [], text
    # test-only passwords are allowed under tests/, credential formats are not
    assert findings("tests/x.py", 'PW = "owner-test-pw-7d1c"') == []
    assert findings("tests/x.py", "-----BEGIN " + "PRIVATE KEY-----") != []
