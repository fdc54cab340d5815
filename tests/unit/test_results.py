"""results: Erlang points from real FUSION output and from files that are not quite right."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from fusion_runner.core import results
from fusion_runner.core.results import ErlangPoint

# Beside the checkout, as in CI: ../shared/data/fusion-real (too big to keep a copy here).
FUSION_REAL = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "fusion-real"
REAL_FILE = "1200.0_erlang.json"


def real_fusion_file() -> Path:
    """The real FUSION output file; a failure (not a skip) when the shared folder is missing."""
    source = FUSION_REAL / REAL_FILE
    if not source.is_file():
        pytest.fail(f"{source} is missing: the tests need the shared folder beside the checkout")
    return source


@pytest.fixture
def real_fusion(tmp_path: Path) -> Path:
    shutil.copy(real_fusion_file(), tmp_path / REAL_FILE)
    return tmp_path


def write(folder: Path, name: str, content: object) -> Path:
    path = folder / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def test_a_real_fusion_file_reads_as_one_point(real_fusion: Path) -> None:
    assert results.read_points(real_fusion) == [
        ErlangPoint(
            erlang=1200.0, blocking_mean=None, blocking_variance=None, ci_rate_block=None,
            ci_percent_block=None, iterations=4, block_list=(0.0, 0.0, 0.0, 0.0),
            sim_end_time="1128_19_48_46_693504", path=real_fusion / REAL_FILE,
        )
    ]  # fmt: skip
    point = results.read_points(real_fusion)[0]
    assert (point.ci_lower, point.ci_upper) == (None, None)


def test_fusions_per_thread_folder_is_read_with_subfolders(real_fusion: Path) -> None:
    output = real_fusion / "run" / "output"
    output.mkdir(parents=True)
    (output / "fusion").symlink_to(real_fusion, target_is_directory=True)  # as the daemon links it
    assert results.read_points(output) == []
    [point] = results.read_points(output, subfolders=True)
    assert (point.erlang, point.path) == (1200.0, output / "fusion" / REAL_FILE)


def test_values_and_the_interval_as_written(tmp_path: Path) -> None:
    write(tmp_path, "300.0_erlang.json", {
        "blocking_mean": 0.1, "blocking_variance": 0.0004, "ci_rate_block": 0.02,
        "ci_percent_block": 40.0, "sim_end_time": "0101_00_00_00_000000",
        "iter_stats": {"0": {"sim_block_list": [0.08]}, "1": {"sim_block_list": [0.08, 0.12]}},
    })  # fmt: skip
    [point] = results.read_points(tmp_path)
    assert (point.erlang, point.blocking_mean, point.ci_percent_block) == (300.0, 0.1, 40.0)
    assert (point.iterations, point.block_list) == (2, (0.08, 0.12))
    assert (point.ci_lower, point.ci_upper) == pytest.approx((0.08, 0.12))


def test_points_are_sorted_by_erlang_not_by_name(tmp_path: Path) -> None:
    for erlang in ("1000.0", "50.0", "300.0", "7.5"):
        write(tmp_path, f"{erlang}_erlang.json", {"blocking_mean": 0.0})
    assert [point.erlang for point in results.read_points(tmp_path)] == [7.5, 50, 300, 1000]


def test_the_erlang_key_serves_when_the_name_has_no_number(tmp_path: Path) -> None:
    write(tmp_path, "run_erlang.json", {"erlang": 250})
    write(tmp_path, "nan_erlang.json", {"erlang": 260})  # float("nan") is no Erlang value
    write(tmp_path, "other_erlang.json", {"blocking_mean": 0.1})
    assert [point.erlang for point in results.read_points(tmp_path)] == [250.0, 260.0]


@pytest.mark.parametrize(
    "content",
    [
        "", "{", '{"blocking_mean": 0.1', "null", "[1, 2]", '"text"', b"\xff\xfe{}",
        "[" * 100_000 + "]" * 100_000,
    ],
    ids=["empty", "brace", "half written", "null", "array", "string", "bytes", "deep"],
)
def test_a_malformed_file_is_skipped_and_the_others_read(
    tmp_path: Path, content: str | bytes
) -> None:
    write(tmp_path, "100.0_erlang.json", content)
    write(tmp_path, "200.0_erlang.json", {"blocking_mean": 0.2})
    assert [point.erlang for point in results.read_points(tmp_path)] == [200.0]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("blocking_mean", "0.1"), ("blocking_mean", True), ("blocking_mean", [0.1]),
        ("blocking_mean", float("nan")), ("blocking_mean", 10**400),
        ("ci_percent_block", {"x": 1}), ("sim_end_time", 1128),
    ],
)  # fmt: skip
def test_a_value_of_the_wrong_type_reads_as_none(tmp_path: Path, field: str, value: object) -> None:
    write(tmp_path, "100.0_erlang.json", {field: value})
    [point] = results.read_points(tmp_path)
    assert getattr(point, field) is None


@pytest.mark.parametrize(
    "iter_stats",
    [
        None, [], "x", {"0": None}, {"0": {}}, {"0": {"sim_block_list": "0.1"}},
        {"0": {"sim_block_list": [0.1, None]}}, {"0": {"sim_block_list": [0.1, "x"]}},
    ],
)  # fmt: skip
def test_iter_stats_without_a_usable_block_list_mean_no_iterations(
    tmp_path: Path, iter_stats: object
) -> None:
    write(tmp_path, "100.0_erlang.json", {"blocking_mean": 0.1, "iter_stats": iter_stats})
    [point] = results.read_points(tmp_path)
    assert (point.iterations, point.block_list, point.blocking_mean) == (0, (), 0.1)


def test_the_longest_usable_block_list_counts(tmp_path: Path) -> None:
    iter_stats = {
        "0": {"sim_block_list": [0.1]},
        "9": {"sim_block_list": [0.1, 0.2, "broken"]},
        "3": {"sim_block_list": [0.1, 0.2]},
    }
    write(tmp_path, "100.0_erlang.json", {"iter_stats": iter_stats})
    [point] = results.read_points(tmp_path)
    assert point.block_list == (0.1, 0.2)


def test_other_files_and_folders_are_not_points(tmp_path: Path) -> None:
    write(tmp_path, "100.0_erlang.json.partial", {"blocking_mean": 0.1})
    write(tmp_path, "100.0_erlang.csv", "x")
    (tmp_path / "200.0_erlang.json").mkdir()
    (tmp_path / "300.0_erlang.json").symlink_to(tmp_path / "missing")
    assert results.read_points(tmp_path, subfolders=True) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_an_unreadable_file_is_skipped(tmp_path: Path) -> None:
    write(tmp_path, "100.0_erlang.json", {"blocking_mean": 0.1}).chmod(0)
    assert results.read_points(tmp_path) == []


def test_a_missing_folder_has_no_points(tmp_path: Path) -> None:
    assert results.read_points(tmp_path / "missing", subfolders=True) == []
    write(tmp_path, "file", "x")
    assert results.read_points(tmp_path / "file", subfolders=True) == []
