"""outputs: FUSION's result folders linked into the run's output/ as fusion, fusion-2, ..."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fusion_runner.daemon import outputs


@pytest.fixture
def output_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "run" / "output"
    folder.mkdir(parents=True)
    return folder


def test_each_folder_gets_the_next_free_name_once(output_dir: Path, tmp_path: Path) -> None:
    s1, s2 = str(tmp_path / "fusion" / "s1"), str(tmp_path / "fusion" / "s2")
    (output_dir / "fusion").mkdir()  # the simulation's own: never touched

    assert outputs.link(output_dir, s1) == "fusion-2"
    assert outputs.link(output_dir, s2) == "fusion-3"
    assert outputs.link(output_dir, s1) == "fusion-2"  # seen again (an adopting daemon)
    assert os.readlink(output_dir / "fusion-3") == s2
    assert outputs.links(output_dir) == {s1: "fusion-2", s2: "fusion-3"}


def test_a_link_may_point_to_a_folder_not_made_yet(output_dir: Path) -> None:
    assert outputs.link(output_dir, "/not/yet/there") == "fusion"
    assert (output_dir / "fusion").is_symlink()


def test_a_relative_folder_is_not_linked(output_dir: Path) -> None:
    with pytest.raises(ValueError, match="absolute"):
        outputs.link(output_dir, "data/output/s1")
    assert not os.listdir(output_dir)


def test_nothing_is_made_through_a_symlinked_output_folder(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "output").symlink_to(elsewhere)
    with pytest.raises(OSError):
        outputs.link(tmp_path / "output", "/x")
    assert not os.listdir(elsewhere)


def test_links_of_a_missing_folder_are_none(tmp_path: Path) -> None:
    assert outputs.links(tmp_path / "missing") == {}
