"""bench/peers' own parts that can be wrong without any server: the payloads every server
gets, the process-tree helpers that pin and measure a server, the benchmark lock, and
where the peers' versions come from. No benchmark runs here."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

from bench.common import (
    benchmark_lock,
    cpus_allowed,
    descendants,
    pin_tree,
    thread_cpus_allowed,
    tree_cpu_ticks,
)
from bench.overhead import write_bodies
from bench.peers import envs, payloads
from bench.peers.run import VARIANTS, Cell, fmt_table, summarize, targets
from inferwatch.inference.training import card_fraud_schema
from stack.procs import poll


@pytest.fixture(scope="module")
def service_lines(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    path = tmp_path_factory.mktemp("bodies") / "service.jsonl"
    write_bodies(path, 256)
    return path.read_text().splitlines()


@pytest.mark.parametrize("fmt", ["bentoml", "mlserver"])
def test_every_peer_format_carries_the_same_256_rows(fmt: str, service_lines: list[str]) -> None:
    schema = card_fraud_schema()
    reference = payloads.rows_of("service", schema, service_lines)
    assert reference.shape == (256, len(schema.features))
    assert len({tuple(r) for r in reference}) == 256  # 256 different transactions

    lines = payloads.bodies(fmt, schema, service_lines)

    assert len(lines) == 256
    assert all("\n" not in line for line in lines)  # one body per line for bench/wrk_post.lua
    assert np.array_equal(payloads.rows_of(fmt, schema, lines), reference)  # same order too


def test_the_mlserver_body_is_one_fp64_row_asking_for_probabilities(
    service_lines: list[str],
) -> None:
    schema = card_fraud_schema()
    doc = json.loads(payloads.bodies("mlserver", schema, service_lines[:1])[0])
    (inp,) = doc["inputs"]
    assert inp["shape"] == [1, len(schema.features)]
    assert inp["datatype"] == "FP64"
    assert doc["outputs"] == [{"name": "predict_proba"}]


def test_the_service_format_is_bench_overheads_bodies(service_lines: list[str]) -> None:
    assert payloads.bodies("service", card_fraud_schema(), service_lines) == service_lines


@pytest.mark.parametrize(
    ("fmt", "answer", "p"),
    [
        ("service", {"probability": 0.25, "prediction": 0}, 0.25),
        ("bentoml", [0.25], 0.25),
        (
            "mlserver",
            {"outputs": [{"name": "predict_proba", "shape": [1, 2], "data": [0.75, 0.25]}]},
            0.25,
        ),
    ],
)
def test_positive_probability_of_each_answer(fmt: str, answer: object, p: float) -> None:
    assert payloads.positive_probability(fmt, answer) == p


def test_an_mlserver_answer_without_probabilities_is_refused() -> None:
    answer = {"outputs": [{"name": "predict", "shape": [1, 1], "data": [1]}]}
    with pytest.raises(ValueError, match="unexpected MLServer output"):
        payloads.positive_probability("mlserver", answer)


def test_every_variant_has_a_known_request_format() -> None:
    assert {v.fmt for v in VARIANTS.values()} <= set(payloads.FORMATS)


def test_the_tree_helpers_find_grandchildren_and_pin_every_one() -> None:
    cpus = sorted(os.sched_getaffinity(0))
    first, last = str(cpus[0]), cpus[-1]
    # sh and its two children (`; :` keeps sh from exec'ing the last one): a tree of 3
    # that lives until its stdin closes
    proc = subprocess.Popen(
        ["taskset", "-c", first, "sh", "-c", "cat | cat; :"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
    )
    try:
        tree = poll(
            lambda: t if len(t := descendants(proc.pid)) == 3 else None,
            10,
            "sh and its two children",
        )
        assert tree[0] == proc.pid
        assert {cpus_allowed(pid) for pid in tree} == {first}  # inherited from taskset
        assert set(tree_cpu_ticks(tree)) == set(tree)

        assert sorted(pin_tree(proc.pid, {last})) == sorted(tree)

        assert {cpus_allowed(pid) for pid in tree} == {str(last)}
        assert set().union(*(thread_cpus_allowed(pid) for pid in tree)) == {str(last)}
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(10)


def test_the_benchmark_lock_excludes_a_second_holder(tmp_path: Path) -> None:
    lock = tmp_path / "bench.lock"

    def free() -> bool:
        fd = os.open(lock, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        finally:
            os.close(fd)
        return True

    with benchmark_lock("test", path=lock):
        assert not free()
        assert lock.read_text() == f"test pid {os.getpid()}\n"
    assert free()


def test_the_peers_run_the_model_libraries_of_the_lock() -> None:
    """Every peer pin is exact, and the model's libraries are the versions inferwatch runs
    (requirements.lock, which test_lock checks against this environment)."""
    for peer in envs.PEER_ENVS.values():
        reqs = envs.requirements(peer)
        assert all("==" in r for r in reqs), reqs
        for lib in envs.MODEL_LIBRARIES:
            assert f"{lib}=={metadata.version(lib)}" in reqs


def test_the_table_averages_rounds_and_the_targets_compare_to_inferwatch() -> None:
    def cell(variant: str, rnd: int, c: int, rps: float, p50: float, p99: float) -> Cell:
        return Cell(variant, rnd, c, rps, p50, p99, int(rps * 20), 0, 0, 100.0, 0.0)

    cells = [
        cell("inferwatch", 0, 128, 1800.0, 40.0, 90.0),
        cell("inferwatch", 1, 128, 2200.0, 60.0, 110.0),  # mean 2000 req/s, P99 100 ms
        cell("mlserver", 0, 128, 1000.0, 50.0, 120.0),  # 2.0x: met, P99 no worse
        cell("bentoml", 0, 128, 700.0, 80.0, 99.0),  # 2.86x: not met (and a better P99)
        cell("bare", 0, 1, 500.0, 1.5, 2.0),
        cell("inferwatch", 0, 1, 450.0, 1.9, 2.5),  # +0.4 ms P50: not met
    ]

    summary = summarize(cells)
    assert summary[("inferwatch", 128)]["rps"] == 2000.0
    assert summary[("inferwatch", 128)]["rounds"] == [1800.0, 2200.0]
    assert summary[("inferwatch", 128)]["p99"] == 100.0
    table = fmt_table(cells, [1, 128], ["bare", "bentoml", "mlserver", "inferwatch"])
    row = next(ln for ln in table.splitlines() if ln.startswith("mlserver")).split()
    assert row[-3:] == ["0.50", "1.20", "-"]  # req/s and P99 over inferwatch's; no spans
    lines = targets(cells)
    assert [ln.rsplit(" ", 2)[-2:] for ln in lines] == [
        ["ms", "MET"],
        ["NOT", "MET"],
        ["NOT", "MET"],
    ]
    assert "2.00x" in lines[0]
    assert "2.86x" in lines[1]
    assert "+0.400 ms" in lines[2]
