"""The peers' virtualenvs: what each installs (the ONE place their versions are pinned).

Each peer gets a virtualenv of its own under ``${INFERWATCH_CACHE:-.stack}/peers/<name>``
(git-ignored), made with the running interpreter's ``venv`` and filled with ``pip`` from
PyPI. It is rebuilt when its pins change (a stamp file holds the pins it was built
with). Besides the peer's own packages every env gets the model's libraries at the
versions requirements.lock pins for inferwatch, so every server unpickles and runs the
same model on the same code.
"""

from __future__ import annotations

import re
import subprocess
import sys
import venv
from dataclasses import dataclass
from pathlib import Path

from stack.procs import CACHE, ROOT

# The model's libraries: the versions of requirements.lock (inferwatch's own environment).
MODEL_LIBRARIES = ("scikit-learn", "numpy", "scipy", "joblib", "threadpoolctl")


@dataclass(frozen=True)
class PeerEnv:
    name: str
    packages: tuple[str, ...]  # pip requirements, each pinned with ==
    why: str  # what is added beyond `pip install <peer>`, and why


PEER_ENVS: dict[str, PeerEnv] = {
    "bentoml": PeerEnv(
        "bentoml",
        ("bentoml==1.4.40", "uvloop==0.23.0", "httptools==0.9.0"),
        # uvicorn falls back to asyncio and h11 without them, which no one serving for
        # throughput runs; BentoML's docs and images add them
        "uvloop and httptools added (pip install bentoml leaves them out)",
    ),
    "mlserver": PeerEnv(
        "mlserver",
        ("mlserver==1.7.1", "mlserver-sklearn==1.7.1", "uvloop==0.21.0"),
        # MLServer 1.7.1 fails to start with uvloop 0.23 ("There is no current event loop")
        "uvloop held at 0.21 (MLServer 1.7.1 does not start with 0.23)",
    ),
    # not a server: bench/cbpe.py runs NannyML's CBPE in it (bench/cbpe_nannyml.py)
    "nannyml": PeerEnv(
        "nannyml",
        ("nannyml==0.13.1", "pandas==2.2.3", "statsmodels==0.15.0"),
        # `import nannyml` fails without statsmodels, which its metadata does not list
        "statsmodels added (nannyml imports it, does not declare it); pandas pinned",
    ),
}
# What a run prints of each env's `pip freeze` (besides the pins).
REPORTED = ("uvicorn", "starlette", "fastapi", "uvloop", "httptools", "pandas", "grpcio")


def locked_versions(names: tuple[str, ...], lock: Path = ROOT / "requirements.lock") -> list[str]:
    """``name==version`` of each of `names`, as requirements.lock pins it."""
    text = lock.read_text()
    out = []
    for name in names:
        m = re.search(rf"^{re.escape(name)}==([^\s\\]+)", text, re.MULTILINE)
        if m is None:
            raise RuntimeError(f"{lock}: {name} is not pinned")
        out.append(f"{name}=={m.group(1)}")
    return out


def requirements(peer: PeerEnv) -> list[str]:
    return [*peer.packages, *locked_versions(MODEL_LIBRARIES)]


def env_dir(name: str) -> Path:
    return CACHE / "peers" / name


def ensure(peer: PeerEnv, log: Path) -> Path:
    """The peer's virtualenv, (re)built if missing or made from other pins; its bin dir."""
    home = env_dir(peer.name)
    stamp = home / "pins.txt"
    wanted = "\n".join(requirements(peer)) + "\n"
    if stamp.exists() and stamp.read_text() == wanted:
        return home / "bin"
    print(f"[peers] installing {peer.name} into {home} (log {log})", file=sys.stderr)
    stamp.unlink(missing_ok=True)
    venv.EnvBuilder(clear=True, with_pip=True).create(home)
    pip = [str(home / "bin" / "pip"), "install", "--disable-pip-version-check", "-q"]
    with log.open("a") as out:
        subprocess.run(
            [*pip, *requirements(peer)],
            check=True,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=1800,
        )
    stamp.write_text(wanted)
    return home / "bin"


def installed(bin_dir: Path) -> dict[str, str]:
    """name -> version of everything in an env (`pip freeze`), names lower-cased."""
    out = subprocess.run(
        [str(bin_dir / "pip"), "freeze", "--disable-pip-version-check"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    versions = {}
    for line in out.splitlines():
        name, sep, version = line.partition("==")
        if sep:
            versions[name.lower().replace("_", "-")] = version
    return versions
