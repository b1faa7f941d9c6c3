"""scripts/depaudit.py, run as scripts/audit runs it, against a stand-in for PyPI's project
JSON and OSV's query API over real HTTP on loopback (recorded from PyPI: ecdsa's Minerva
advisory, listed twice, as PYSEC and as GHSA, each aliasing the other)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from stack.procs import ROOT

SCRIPT = ROOT / "scripts" / "depaudit.py"
HANG = -1  # a response that never comes (the client times out)

MINERVA = "python-ecdsa has been found to be subject to a Minerva timing attack on the P-256"
ECDSA_VULNS: list[dict[str, Any]] = [
    {
        "aliases": ["CVE-2024-23342", "GHSA-wj6h-64fc-37mp"],
        "details": MINERVA,
        "fixed_in": [],
        "id": "PYSEC-2026-1325",
        "link": "https://osv.dev/vulnerability/PYSEC-2026-1325",
        "source": "osv",
        "summary": None,
        "withdrawn": None,
    },
    {
        "aliases": ["CVE-2024-23342", "PYSEC-2026-1325"],
        "details": MINERVA,
        "fixed_in": [],
        "id": "GHSA-wj6h-64fc-37mp",
        "link": "https://osv.dev/vulnerability/GHSA-wj6h-64fc-37mp",
        "source": "osv",
        "summary": None,
        "withdrawn": None,
    },
]


def project(latest: str, vulns: list[dict[str, Any]] | None = None) -> tuple[int, bytes]:
    body = {"info": {"name": "x", "version": latest}, "releases": {}, "urls": []}
    return 200, json.dumps({**body, "vulnerabilities": vulns or []}).encode()


# the same advisory as OSV's query API answers it (OSV schema)
OSV_MINERVA: dict[str, Any] = {
    "id": "GHSA-wj6h-64fc-37mp",
    "aliases": ["CVE-2024-23342"],
    "details": MINERVA,
    "affected": [
        {
            "package": {"name": "ecdsa", "ecosystem": "PyPI"},
            "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}]}],
        }
    ],
    "schema_version": "1.6.0",
}


class FakePyPI:
    """path -> responses in turn (the last one repeats); records every path asked. POST
    /v1/query answers OSV queries from `osv` (package -> advisories)."""

    def __init__(self) -> None:
        self.routes: dict[str, list[tuple[int, bytes]]] = {}
        self.osv: dict[str, list[dict[str, Any]]] = {}
        self.asked: list[str] = []
        self.release = threading.Event()

    def serve(self, name: str, *responses: tuple[int, bytes]) -> None:
        self.routes[f"/pypi/{name}/json"] = list(responses)


@pytest.fixture
def pypi() -> Iterator[tuple[FakePyPI, str]]:
    fake = FakePyPI()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            fake.asked.append(self.path)
            queue = fake.routes.get(self.path, [(404, b"Not Found")])
            status, body = queue.pop(0) if len(queue) > 1 else queue[0]
            if status == HANG:
                fake.release.wait(10)  # held until the test ends
                return
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            fake.asked.append(self.path)
            query = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            vulns = fake.osv.get(query["package"]["name"], [])
            body = json.dumps({"vulns": vulns} if vulns else {}).encode()
            self.send_response(200 if self.path == "/v1/query" else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield fake, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        fake.release.set()
        server.shutdown()
        server.server_close()
        thread.join()


def audit(
    tmp_path: Path, index: str, pins: list[str], *extra: str, source: str = "pypi-latest"
) -> subprocess.CompletedProcess[str]:
    lock = tmp_path / "requirements.lock"
    # the shape scripts/lock writes: hashes on continuation lines, `via` comments
    entry = "{} \\\n    --hash=sha256:" + "0" * 64 + "\n    # via -r pyproject.toml\n"
    lock.write_text("".join(entry.format(p) for p in pins))
    args = [sys.executable, str(SCRIPT), "--source", source, "--index", index]
    args += ["--osv-url", f"{index}/v1/query", "--lock", str(lock), "--timeout", "0.5", *extra]
    return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)


def test_a_pin_at_the_latest_release_with_an_advisory_fails(
    pypi: tuple[FakePyPI, str], tmp_path: Path
) -> None:
    fake, index = pypi
    fake.serve("ecdsa", project("0.19.2", ECDSA_VULNS))
    fake.serve("httpx", project("0.28.1"))
    run = audit(tmp_path, index, ["ecdsa==0.19.2", "httpx==0.28.1"])
    assert run.returncode == 1, run.stdout + run.stderr
    assert "audited 2 of 2 pins, 1 findings" in run.stdout  # the two records are one
    (finding,) = [line for line in run.stdout.splitlines() if "FINDING" in line]
    assert "ecdsa==0.19.2" in finding
    for advisory_id in ("PYSEC-2026-1325", "GHSA-wj6h-64fc-37mp", "CVE-2024-23342"):
        assert advisory_id in finding
    assert "no fixed release listed" in finding


@pytest.mark.parametrize("ignore", ["GHSA-wj6h-64fc-37mp", "CVE-2024-23342"])
def test_a_triaged_id_or_alias_passes(
    pypi: tuple[FakePyPI, str], tmp_path: Path, ignore: str
) -> None:
    fake, index = pypi
    fake.serve("ecdsa", project("0.19.2", ECDSA_VULNS))
    run = audit(tmp_path, index, ["ecdsa==0.19.2"], "--ignore", ignore)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "audited 1 of 1 pins, 0 findings (1 triaged, ignored); not audited 0" in run.stdout
    assert "triaged ecdsa==0.19.2: PYSEC-2026-1325" in run.stdout


def test_a_withdrawn_advisory_is_no_finding(pypi: tuple[FakePyPI, str], tmp_path: Path) -> None:
    fake, index = pypi
    withdrawn = [{**v, "withdrawn": "2026-11-02T00:00:00Z"} for v in ECDSA_VULNS]
    fake.serve("ecdsa", project("0.19.2", withdrawn))
    run = audit(tmp_path, index, ["ecdsa==0.19.2"])
    assert run.returncode == 0, run.stdout + run.stderr
    assert "audited 1 of 1 pins, 0 findings (0 triaged, ignored); not audited 0" in run.stdout


def test_a_pin_behind_the_latest_release_is_not_audited(
    pypi: tuple[FakePyPI, str], tmp_path: Path
) -> None:
    """The latest release's advisories say nothing of 0.19.1: shown, never a finding, and
    the pin is never counted audited."""
    fake, index = pypi
    fake.serve("ecdsa", project("0.19.2", ECDSA_VULNS))
    fake.serve("httpx", project("0.28.1"))
    fake.serve("pyyaml", project("6.0.4"))
    run = audit(tmp_path, index, ["ecdsa==0.19.1", "httpx==0.28.1", "PyYAML==6.0.3"])
    assert run.returncode == 3, run.stdout + run.stderr
    assert "audited 1 of 3 pins, 0 findings" in run.stdout
    assert "not audited 2 (2 not the latest release, 0 without an answer)" in run.stdout
    lines = run.stdout.splitlines()
    (ecdsa,) = [line for line in lines if "NOT AUDITED ecdsa==0.19.1" in line]
    assert "pinned 0.19.1, latest release 0.19.2" in ecdsa
    assert "1 advisories (1 without a fixed release)" in ecdsa
    assert "whether they affect 0.19.1 is not in the data" in ecdsa
    assert any("NOT AUDITED pyyaml==6.0.3: pinned 6.0.3, latest release 6.0.4" in x for x in lines)
    assert not any("FINDING" in line for line in lines)


def test_a_finding_outranks_pins_not_audited(pypi: tuple[FakePyPI, str], tmp_path: Path) -> None:
    fake, index = pypi
    fake.serve("ecdsa", project("0.19.2", ECDSA_VULNS))
    fake.serve("pyyaml", project("6.0.4"))
    run = audit(tmp_path, index, ["ecdsa==0.19.2", "pyyaml==6.0.3"])
    assert run.returncode == 1, run.stdout + run.stderr
    assert "1 findings" in run.stdout
    assert "not audited 1" in run.stdout


def test_no_answer_is_not_audited_not_a_crash(pypi: tuple[FakePyPI, str], tmp_path: Path) -> None:
    """A hung request times out (and is retried once), a missing project is not retried;
    a 503 is retried and its second answer audits the pin."""
    fake, index = pypi
    fake.serve("httpx", (HANG, b""))
    fake.serve("orjson", (503, b"busy"), project("3.13.0"))
    run = audit(tmp_path, index, ["httpx==0.28.1", "orjson==3.13.0", "no-such-project==1.0"])
    assert run.returncode == 3, run.stdout + run.stderr
    assert "audited 1 of 3 pins, 0 findings" in run.stdout
    assert "not audited 2 (0 not the latest release, 2 without an answer)" in run.stdout
    assert "NOT AUDITED httpx==0.28.1: no answer from" in run.stdout
    assert "ReadTimeout" in run.stdout
    assert "NOT AUDITED no-such-project==1.0: HTTP 404 from" in run.stdout
    assert "Traceback" not in run.stderr
    assert fake.asked.count("/pypi/httpx/json") == 2
    assert fake.asked.count("/pypi/orjson/json") == 2
    assert fake.asked.count("/pypi/no-such-project/json") == 1


def test_every_pin_of_the_real_lock_is_accounted_for(
    pypi: tuple[FakePyPI, str], tmp_path: Path
) -> None:
    """requirements.lock as scripts/lock writes it: every pin is read, and with no answer
    every one is listed as not audited (none is dropped, none counted audited)."""
    _, index = pypi
    lock = ROOT / "requirements.lock"
    pins = [line.split(" ")[0] for line in lock.read_text().splitlines() if "==" in line]
    args = [sys.executable, str(SCRIPT), "--source", "pypi-latest", "--index", index]
    run = subprocess.run([*args, "--lock", str(lock)], capture_output=True, text=True, check=False)
    assert run.returncode == 3, run.stdout + run.stderr
    assert f"audited 0 of {len(pins)} pins, 0 findings" in run.stdout
    listed = [
        line.split()[3].rstrip(":") for line in run.stdout.splitlines() if "NOT AUDITED" in line
    ]
    assert sorted(listed) == sorted(pins)


def test_pip_audit_with_osv_fails_on_a_finding_and_passes_a_triaged_one(
    pypi: tuple[FakePyPI, str], tmp_path: Path
) -> None:
    """pip-audit itself, its OSV service pointed at the stand-in: the first choice where
    its service answers, with the same triaged ids (matched by alias too)."""
    fake, index = pypi
    fake.osv["ecdsa"] = [OSV_MINERVA]
    pins = ["ecdsa==0.19.2", "httpx==0.28.1"]
    found = audit(tmp_path, index, pins, source="osv")
    assert found.returncode == 1, found.stdout + found.stderr
    assert "pip-audit, vulnerability service osv" in found.stdout
    assert "GHSA-wj6h-64fc-37mp" in found.stdout
    assert fake.asked.count("/v1/query") == 1 + len(pins)  # the probe, then each pin
    triaged = audit(tmp_path, index, pins, "--ignore", "CVE-2024-23342", source="osv")
    assert triaged.returncode == 0, triaged.stdout + triaged.stderr
    assert "GHSA-wj6h-64fc-37mp" not in triaged.stdout


def test_a_named_service_that_does_not_answer_is_not_audited(
    pypi: tuple[FakePyPI, str], tmp_path: Path
) -> None:
    _, index = pypi
    elsewhere = ["--osv-url", f"{index}/elsewhere"]
    run = audit(tmp_path, index, ["ecdsa==0.19.2"], *elsewhere, source="osv")
    assert run.returncode == 3, run.stdout + run.stderr
    assert f"pip-audit's services do not answer: {index}/elsewhere: HTTP 404" in run.stdout
    # neither pip-audit nor the PyPI fallback ran: nothing claimed audited
    assert "pip-audit, vulnerability service" not in run.stdout
    assert "PyPI project JSON" not in run.stdout
