"""What the docs and the comments say about the tree is true of it.

* The README's configuration reference lists every setting (one source of truth: Settings).
* The README's folder table lists exactly the top-level folders git tracks.
* Every repository path that a doc (README.md, docs/*.md) or a comment or docstring cites
  exists: `<folder>/<file>.<ext>` and `<folder>/` citations anywhere in the text, bare
  `<name>.py`-style names, with `<...>`, `*` and `{a,b}` read as wildcards. A path may be
  cited relative to where it lives (`telemetry/http.py` inside the package, `rules/`
  beside prometheus.yml), so a citation matches a tracked path or the tail of one. Paths
  that name what runs or what gets generated (RUNTIME) are not in the tree by design;
  nothing may point outside the repository (`../` out of it, a developer's machine path).
"""

from __future__ import annotations

import ast
import fnmatch
import functools
import io
import itertools
import re
import subprocess
import tokenize
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from inferwatch.settings import Settings

ROOT = Path(__file__).resolve().parents[2]

# Runtime and generated locations (git-ignored or written by the launcher), and
# placeholders that describe a shape rather than cite a file.
RUNTIME = ("run/", ".stack/", "var/", "models/", ".venv/", "logs/", "targets/")
PLACEHOLDERS = frozenset({"migrations/NNNN_name.sql", "path/relative/to/sys.path.py"})

_EXT = r"(?:py|md|yml|yaml|sql|sh|toml|json|jsonl|lua|env|lock|txt|cfg|ini)"
# dir/file.ext, optionally ./ or ../ first; not the tail of a URL or an absolute path
PATH_RE = re.compile(
    r"(?<![\w.:/$*-])((?:\.\.?/)*[\w.<>*{}-]+(?:/[\w.<>*{},-]+)+\." + _EXT + r")(?![\w/])"
)
# a bare file name (no folder), e.g. `launch.py`
BARE_RE = re.compile(r"(?<![\w./:$*-])([\w*-]+\.(?:py|md|sql|sh|yml|yaml|toml|lua))(?![\w/])")
# a folder, in backticks: `collector/`
DIR_RE = re.compile(r"`((?:\.\.?/)*[\w.-]+(?:/[\w.<>*-]+)*/)`")
# paths on someone's machine, never in the repository
MACHINE_RE = re.compile(r"(?<![\w.])((?:/work|/home|/Users|/root)/[\w./-]+|~/[\w./-]+)")


@functools.cache
def tracked() -> tuple[str, ...]:
    out = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True, timeout=60
    )
    return tuple(out.stdout.split())


def _py_comments(text: str) -> str:
    parts = [
        t.string
        for t in tokenize.generate_tokens(io.StringIO(text).readline)
        if t.type == tokenize.COMMENT
    ]
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            doc = ast.get_docstring(node, clean=False)
            if doc:
                parts.append(doc)
    return "\n".join(parts)


def _line_comments(text: str, mark: str) -> str:
    return "\n".join(line[line.index(mark) :] for line in text.splitlines() if mark in line)


def cited_texts() -> Iterator[tuple[str, str]]:
    """(file, the part of it that is prose: whole docs, comments and docstrings of code)."""
    for f in tracked():
        path = ROOT / f
        if f.endswith(".md"):
            yield f, path.read_text()
        elif f.endswith(".py"):
            yield f, _py_comments(path.read_text())
        elif f.endswith((".sql", ".lua")):
            yield f, _line_comments(path.read_text(), "--")
        elif f.endswith((".yml", ".yaml", ".toml", ".sh", ".env")) or f.startswith(
            ("scripts/", ".ci/")
        ):
            yield f, _line_comments(path.read_text(), "#")


def _expand(pattern: str) -> list[str]:
    """`<x>` -> `*`; `{a,b}` -> one pattern each."""
    pattern = re.sub(r"<[^>/]*>", "*", pattern)
    m = re.search(r"\{([^{}]*)\}", pattern)
    if not m:
        return [pattern]
    return list(
        itertools.chain.from_iterable(
            _expand(pattern[: m.start()] + alt.strip() + pattern[m.end() :])
            for alt in m.group(1).split(",")
        )
    )


def exists(citation: str, cited_from: str) -> bool:
    if citation in PLACEHOLDERS or citation.startswith(RUNTIME):
        return True
    if citation.startswith(("./", "../")):
        base = PurePosixPath(cited_from).parent
        parts: list[str] = []
        for part in (base / citation).parts:
            if part == "..":
                if not parts:
                    return False  # outside the repository
                parts.pop()
            elif part != ".":
                parts.append(part)
        citation = "/".join(parts) + ("/" if citation.endswith("/") else "")
        anchored = True
    else:
        anchored = False
    for pat in _expand(citation):
        if pat.endswith("/"):
            pat += "*"
        for t in tracked():
            if "/" not in pat and not pat.endswith("*") and fnmatch.fnmatch(t.rsplit("/")[-1], pat):
                return True
            if fnmatch.fnmatch(t, pat) or (not anchored and fnmatch.fnmatch(t, "*/" + pat)):
                return True
    return False


def stale_citations() -> list[str]:
    stale = []
    for f, text in cited_texts():
        found = {m.group(1) for m in PATH_RE.finditer(text)}
        found |= {m.group(1) for m in BARE_RE.finditer(text)}
        found |= {m.group(1) for m in DIR_RE.finditer(text)}
        stale += [f"{f}: {c}" for c in sorted(found) if not exists(c, f)]
        stale += [f"{f}: {m.group(1)} (outside the repository)" for m in MACHINE_RE.finditer(text)]
    return stale


def test_every_setting_is_documented_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [
        f"INFERWATCH_{name.upper()}"
        for name in Settings.model_fields
        if f"`INFERWATCH_{name.upper()}`" not in readme
    ]
    assert missing == []


def readme_folders() -> list[str]:
    """First cells of the table under the README's `## Folders` heading."""
    section = (ROOT / "README.md").read_text().split("\n## Folders\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `([^`]+)/` \|", section, flags=re.MULTILINE)


def test_the_readme_folder_list_is_the_tree() -> None:
    folders = readme_folders()
    top_level = {t.split("/", 1)[0] for t in tracked() if "/" in t}
    assert len(folders) == len(set(folders))
    assert set(folders) == top_level


def test_every_cited_path_exists() -> None:
    assert stale_citations() == []


def test_the_citation_check_finds_what_is_stale() -> None:
    """The matcher itself: what it must accept and what it must refuse."""
    assert exists("prometheus/slo.yml", "README.md")
    assert exists("telemetry/http.py", "service/inferwatch/app.py")
    assert exists("run/<name>/logs/service.log", "docs/runbook.md")
    assert exists("prometheus/tests/*_test.yml", "docs/pipeline.md")
    assert exists("collector/", "README.md")
    assert exists("../stack/ports.env", "scripts/run")
    assert not exists("docs/api.md", "service/inferwatch/settings.py")
    assert not exists("loki/", "README.md")
    assert not exists("DESIGN.md", "docs/decisions.md")
    assert not exists("../shared/DESIGN.md", "docs/decisions.md")
    assert not exists("../../x/README.md", "docs/decisions.md")
    text = "see ../shared/STYLE.md and /work/shared/DESIGN.md, `loki/`, docs/api.md"
    found = {m.group(1) for r in (PATH_RE, BARE_RE, DIR_RE, MACHINE_RE) for m in r.finditer(text)}
    assert found == {"../shared/STYLE.md", "/work/shared/DESIGN.md", "loki/", "docs/api.md"}
