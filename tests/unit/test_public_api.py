"""service/inferwatch uses its dependencies' public APIs only, checked on the source.

A dependency's private member is one whose name starts with ``_`` (dunders excepted).
Flagged, in every module of the service:

- an import from a module path with a private segment (``opentelemetry.exporter.otlp.
  proto.http._common``), or of a private name (``from x import _helper``);
- an access to an attribute named in ``PRIVATE_ATTRIBUTES``, the private members of the
  OpenTelemetry SDK, its exporters and FastAPI that this code base once reached for,
  whatever object it is read on (our own classes do not use these names);
- ``getattr``/``setattr``/``hasattr``/``delattr`` with a private name, on anything but
  ``self``;
- a class deriving from a dependency's class that defines a private method the
  dependency's class already has (overriding a private hook).
"""

from __future__ import annotations

import ast
import importlib

import pytest

from stack.procs import ROOT

SERVICE = ROOT / "service" / "inferwatch"
OWN = "inferwatch"
PRIVATE_ATTRIBUTES = frozenset(
    {
        "_dict",  # BoundedAttributes
        "_client",  # the OTLP exporters' HTTP client
        "_metrics",  # the OTLP exporters' self-metrics
        "_attributes",  # a span's BoundedAttributes
        "_events",
        "_links",
        "_shutdown",  # the exporters' shutdown flag
        "_instrument_class_aggregation",  # MetricReader's aggregation table
        "_telemetry",  # FastAPI's telemetry configuration
        "_session",  # the OTLP exporters' requests session
    }
)
REFLECTION = frozenset({"getattr", "setattr", "hasattr", "delattr"})


def private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _imports(tree: ast.Module) -> dict[str, tuple[str, str | None]]:
    """Local name -> (module, attribute) for every absolute import of a dependency."""
    out: dict[str, tuple[str, str | None]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                out[(alias.asname or alias.name).split(".")[0]] = (alias.name, None)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                out[alias.asname or alias.name] = (node.module, alias.name)
    return {k: v for k, v in out.items() if v[0].split(".")[0] not in (OWN, "__future__")}


def _dependency_class(expr: ast.expr, imports: dict[str, tuple[str, str | None]]) -> type | None:
    """The class a base-class expression names, when it comes from a dependency."""
    parts: list[str] = []
    while isinstance(expr, ast.Attribute):
        parts.insert(0, expr.attr)
        expr = expr.value
    if not isinstance(expr, ast.Name) or expr.id not in imports:
        return None
    module, attribute = imports[expr.id]
    obj: object = importlib.import_module(module)
    for name in ([attribute] if attribute else []) + parts:
        obj = getattr(obj, name, None)
    return obj if isinstance(obj, type) else None


def violations(source: str, where: str = "<source>") -> list[str]:
    tree = ast.parse(source, where)
    imports = _imports(tree)
    bad = []
    for node in ast.walk(tree):
        line = f"{where}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import):
            for alias in node.names:
                if any(private(s) for s in alias.name.split(".")):
                    bad.append(f"{line}: imports private module {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            if node.module.split(".")[0] in (OWN, "__future__"):
                continue
            if any(private(s) for s in node.module.split(".")):
                bad.append(f"{line}: imports from private module {node.module}")
            for alias in node.names:
                if private(alias.name):
                    bad.append(f"{line}: imports private {node.module}.{alias.name}")
        elif isinstance(node, ast.Attribute) and node.attr in PRIVATE_ATTRIBUTES:
            bad.append(f"{line}: reads private attribute .{node.attr}")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in REFLECTION
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
            and private(node.args[1].value)
            and not (isinstance(node.args[0], ast.Name) and node.args[0].id == "self")
        ):
            bad.append(f"{line}: {node.func.id}(..., {node.args[1].value!r})")
        elif isinstance(node, ast.ClassDef):
            bases = [c for c in (_dependency_class(b, imports) for b in node.bases) if c]
            for item in node.body:
                if (
                    isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef)
                    and private(item.name)
                    and any(hasattr(base, item.name) for base in bases)
                ):
                    bad.append(f"{line}: {node.name}.{item.name} overrides a private method")
    return bad


@pytest.mark.parametrize(
    "source",
    [
        "from opentelemetry.exporter.otlp.proto.http._common import RequestPayloadTooLargeError",
        "import opentelemetry.sdk.metrics._internal.aggregation",
        "from opentelemetry.sdk.environment_variables import _OTEL_PYTHON_X",
        "items = span.attributes._dict.items()",
        "reader._instrument_class_aggregation[Histogram] = explicit",
        "config = app._telemetry",
        "items = getattr(attributes, '_dict', attributes)",
        "from opentelemetry.sdk.metrics.export import MetricReader\n"
        "class Reader(MetricReader):\n"
        "    def _receive_metrics(self, data, timeout_millis=0, **kwargs):\n"
        "        pass\n",
    ],
)
def test_the_check_catches_private_use(source: str) -> None:
    assert violations(source) != []


@pytest.mark.parametrize(
    "source",
    [
        "from __future__ import annotations",
        "from opentelemetry.sdk.trace.export import SpanExporter",
        "from inferwatch.telemetry.otlp_spans import _varint",  # our own private helpers
        "value = self._cache",
        "value = getattr(self, '_cache', None)",
        "from opentelemetry.sdk.trace.export import SpanExporter\n"
        "class Ours(SpanExporter):\n"
        "    def _send(self, body):\n"  # a new helper, not an override
        "        pass\n",
    ],
)
def test_the_check_allows_public_use(source: str) -> None:
    assert violations(source) == []


def test_the_service_uses_public_apis_only() -> None:
    bad = [
        v
        for path in sorted(SERVICE.rglob("*.py"))
        for v in violations(path.read_text(), str(path.relative_to(ROOT)))
    ]
    assert bad == []


def test_the_scan_sees_the_service() -> None:
    files = list(SERVICE.rglob("*.py"))
    assert SERVICE / "telemetry" / "otlp_spans.py" in files
    assert len(files) > 20
