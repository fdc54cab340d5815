"""rundir: run ids, the directory layout and prepare, argv and environment."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from fusion_runner.core import rundir
from fusion_runner.core.errors import FusionRunnerError, InvalidRun
from tests.unit.test_runconfig import EXAMPLE_CONFIG, EXAMPLE_INI, as_dict, read_ini

RUN_ID = "abc123def456"


def listing(root: Path) -> list[tuple[str, int]]:
    return sorted((str(p.relative_to(root)), p.lstat().st_mode) for p in root.rglob("*"))


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


# --- run ids --------------------------------------------------------------------------------


@pytest.mark.parametrize("run_id", ["abc123def456", "000000000000", "ffffffffffff"])
def test_valid_run_ids_are_returned(run_id: str) -> None:
    assert rundir.validate_run_id(run_id) == run_id


@pytest.mark.parametrize(
    "run_id",
    [
        "../../etc/x",
        "../x",
        "ABC123DEF456",
        "abc123def45",
        "abc123def4567",
        "",
        "abc123def45g",
        "abc123def456\n",
        " abc123def456",
        "abc123/ef456",
        "abc123def45\u0661",
        "\uff41bc123def456",
        "abc123def45.",
    ],
)
def test_invalid_run_ids_are_refused(run_id: str) -> None:
    with pytest.raises(InvalidRun, match=r"^invalid run id .*must be 12 lowercase hex characters"):
        rundir.validate_run_id(run_id)


@pytest.mark.parametrize("run_id", [11, 123456789012, None, b"abc123def456", ["abc123def456"]])
def test_non_string_run_ids_are_refused(run_id: object) -> None:
    with pytest.raises(InvalidRun, match="invalid run id"):
        rundir.validate_run_id(run_id)


def test_the_invalid_run_id_message_quotes_the_id() -> None:
    with pytest.raises(InvalidRun) as caught:
        rundir.validate_run_id("../x")
    assert str(caught.value) == "invalid run id '../x': must be 12 lowercase hex characters"
    assert isinstance(caught.value, FusionRunnerError)


def test_a_huge_invalid_run_id_gives_a_short_message() -> None:
    with pytest.raises(InvalidRun) as caught:
        rundir.validate_run_id("x" * 100_000)
    assert len(str(caught.value)) < 200


@given(st.text(max_size=20))
def test_only_twelve_lowercase_hex_characters_pass(run_id: str) -> None:
    valid = len(run_id) == 12 and set(run_id) <= set("0123456789abcdef")
    try:
        assert rundir.validate_run_id(run_id) == run_id
        assert valid
    except InvalidRun:
        assert not valid


# --- paths and prepare ----------------------------------------------------------------------


def test_paths_lay_out_the_run_directory(tmp_path: Path) -> None:
    paths = rundir.RunPaths.under(tmp_path / "runs", RUN_ID)
    run_dir = tmp_path.resolve() / "runs" / RUN_ID
    assert paths == rundir.RunPaths(
        run_id=RUN_ID,
        run_dir=run_dir,
        config_file=run_dir / "config.ini",
        log_file=run_dir / "logs" / "sim.log",
        progress_file=run_dir / "progress.jsonl",
        output_dir=run_dir / "output",
        exit_record=run_dir / "exit.json",
        spawn_marker=run_dir / ".spawned",
    )


def test_paths_are_absolute_for_a_relative_runs_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    paths = rundir.RunPaths.under(Path("runs"), RUN_ID)
    assert paths.run_dir == tmp_path.resolve() / "runs" / RUN_ID
    assert all(path.is_absolute() for path in (paths.config_file, paths.exit_record))


def test_paths_refuse_an_invalid_id(tmp_path: Path) -> None:
    with pytest.raises(InvalidRun, match="invalid run id"):
        rundir.RunPaths.under(tmp_path, "../../etc/x")


@pytest.fixture
def umask() -> Iterator[None]:
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


@pytest.mark.usefixtures("umask")
@pytest.mark.parametrize("mask", [0o000, 0o077, 0o022, 0o027])
def test_prepare_makes_the_directories_0750_whatever_the_umask(tmp_path: Path, mask: int) -> None:
    os.umask(mask)
    paths = rundir.prepare(tmp_path / "runs" / "nested", RUN_ID, json.dumps(EXAMPLE_CONFIG))
    os.umask(0o022)
    assert paths == rundir.RunPaths.under(tmp_path / "runs" / "nested", RUN_ID)
    for directory in (paths.run_dir, paths.log_file.parent, paths.output_dir):
        assert directory.is_dir()
        assert mode(directory) == 0o750, directory
    assert paths.config_file.read_text(encoding="utf-8") == EXAMPLE_INI
    assert sorted(os.listdir(paths.run_dir)) == ["config.ini", "logs", "output"]


def test_prepare_fixes_the_mode_of_an_existing_run_directory(tmp_path: Path) -> None:
    (tmp_path / RUN_ID / "logs").mkdir(parents=True, mode=0o700)
    (tmp_path / RUN_ID).chmod(0o777)
    paths = rundir.prepare(tmp_path, RUN_ID, "{}")
    assert mode(paths.run_dir) == 0o750
    assert mode(paths.log_file.parent) == 0o750


def test_prepare_keeps_an_existing_config_ini(tmp_path: Path) -> None:
    first = rundir.prepare(tmp_path, RUN_ID, '{"s": {"k": 1}}')
    first.config_file.write_text("[kept]\n")
    (first.output_dir / "artefact").write_text("x")
    again = rundir.prepare(tmp_path, RUN_ID, '{"s": {"k": 2}}')
    assert again.config_file.read_text() == "[kept]\n"
    assert (again.output_dir / "artefact").read_text() == "x"


def test_prepare_leaves_no_temporary_file_when_the_write_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError, match="No space left"):
        rundir.prepare(tmp_path, RUN_ID, "{}")
    assert sorted(os.listdir(tmp_path / RUN_ID)) == ["logs", "output"]


def test_prepare_removes_the_temporary_file_a_killed_daemon_left(tmp_path: Path) -> None:
    # SIGKILLed between creating its temporary config.ini and the rename: no cleanup ran.
    run_dir = tmp_path / RUN_ID
    run_dir.mkdir()
    (run_dir / ".config.ini.0a1b2c3d.tmp").write_text("[half")
    (run_dir / ".config.ini.notmine.tmp").write_text("a user's")
    paths = rundir.prepare(tmp_path, RUN_ID, '{"s": {"k": 1}}')
    assert paths.config_file.read_text() == "[s]\nk = 1\n\n"
    assert sorted(os.listdir(run_dir)) == [".config.ini.notmine.tmp", "config.ini", "logs",
                                           "output"]


@pytest.mark.parametrize(
    ("run_id", "config_json"),
    [
        ("../../etc/x", "{}"),
        ("ABC123DEF456", "{}"),
        ("abc123def45", "{}"),
        (RUN_ID, "not json"),
        (RUN_ID, '{"s": {"k": "a\\nb"}}'),
        (RUN_ID, '{"s": 1}'),
    ],
)
def test_prepare_writes_nothing_for_a_bad_row(
    tmp_path: Path, run_id: str, config_json: str
) -> None:
    (tmp_path / "existing").mkdir()
    before = listing(tmp_path)
    for runs_dir in (tmp_path, tmp_path / "runs"):
        with pytest.raises(InvalidRun):
            rundir.prepare(runs_dir, run_id, config_json)
    assert listing(tmp_path) == before


def test_prepare_refuses_a_symlinked_run_directory(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir(mode=0o700)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / RUN_ID).symlink_to(outside, target_is_directory=True)
    before = listing(tmp_path)
    with pytest.raises(InvalidRun, match=f"{RUN_ID} is a symlink or not a directory"):
        rundir.prepare(tmp_path / "runs", RUN_ID, "{}")
    assert listing(tmp_path) == before
    assert mode(outside) == 0o700


@pytest.mark.parametrize("kind", ["file", "dangling symlink"])
def test_prepare_refuses_a_run_directory_that_is_not_one(tmp_path: Path, kind: str) -> None:
    target = tmp_path / RUN_ID
    if kind == "file":
        target.write_text("x")
    else:
        target.symlink_to(tmp_path / "missing")
    before = listing(tmp_path)
    with pytest.raises(InvalidRun, match="is a symlink or not a directory"):
        rundir.prepare(tmp_path, RUN_ID, "{}")
    assert listing(tmp_path) == before


@pytest.mark.parametrize("name", ["logs", "output"])
def test_prepare_refuses_a_symlinked_subdirectory(tmp_path: Path, name: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir(mode=0o700)
    (tmp_path / "runs" / RUN_ID).mkdir(parents=True)
    (tmp_path / "runs" / RUN_ID / name).symlink_to(outside)
    with pytest.raises(InvalidRun, match=f"{name} is a symlink or not a directory"):
        rundir.prepare(tmp_path / "runs", RUN_ID, "{}")
    assert mode(outside) == 0o700
    assert not (tmp_path / "runs" / RUN_ID / "config.ini").exists()


def test_prepare_does_not_write_through_a_symlinked_config_ini(tmp_path: Path) -> None:
    outside = tmp_path / "outside.ini"
    outside.write_text("[theirs]\n")
    (tmp_path / "runs" / RUN_ID).mkdir(parents=True)
    (tmp_path / "runs" / RUN_ID / "config.ini").symlink_to(outside)
    rundir.prepare(tmp_path / "runs", RUN_ID, '{"s": {"k": 1}}')
    assert outside.read_text() == "[theirs]\n"


# --- command and environment ----------------------------------------------------------------


@pytest.fixture
def paths(tmp_path: Path) -> rundir.RunPaths:
    return rundir.RunPaths.under(tmp_path, RUN_ID)


def test_the_default_template_expands(paths: rundir.RunPaths) -> None:
    template = [
        "{python}",
        "-m",
        "fusion_runner.refsim",
        "--config",
        "{config}",
        "--progress-file",
        "{progress}",
        "--output-dir",
        "{output_dir}",
    ]
    assert rundir.expand_command(template, paths, "/usr/bin/python3") == [
        "/usr/bin/python3",
        "-m",
        "fusion_runner.refsim",
        "--config",
        str(paths.config_file),
        "--progress-file",
        str(paths.progress_file),
        "--output-dir",
        str(paths.output_dir),
    ]


def test_the_fusion_template_expands(paths: rundir.RunPaths) -> None:
    template = [
        "{python}",
        "-m",
        "fusion.cli.run_sim",
        "run_sim",
        "--config_path",
        "{config}",
        "--run_id",
        "{run_id}",
        "--progress_file",
        "{progress}",
    ]
    assert rundir.expand_command(template, paths, "py") == [
        "py",
        "-m",
        "fusion.cli.run_sim",
        "run_sim",
        "--config_path",
        str(paths.config_file),
        "--run_id",
        RUN_ID,
        "--progress_file",
        str(paths.progress_file),
    ]


def test_placeholders_expand_inside_tokens_and_other_braces_survive(
    paths: rundir.RunPaths,
) -> None:
    template = [
        "--dir={run_dir}/x",
        "{log}:{log}",
        '{"a": {"b": 1}}',
        "{unknown}",
        "{{run_id}}",
        "{ run_id }",
        "{}",
        "{0}",
        "%(run_id)s",
        "{python",
    ]
    assert rundir.expand_command(template, paths, "py") == [
        f"--dir={paths.run_dir}/x",
        f"{paths.log_file}:{paths.log_file}",
        '{"a": {"b": 1}}',
        "{unknown}",
        "{" + RUN_ID + "}",
        "{ run_id }",
        "{}",
        "{0}",
        "%(run_id)s",
        "{python",
    ]


def test_expanded_values_are_not_expanded_again(tmp_path: Path) -> None:
    paths = rundir.RunPaths.under(tmp_path / "{run_id}", RUN_ID)
    expanded = rundir.expand_command(["{run_dir}", "{python}"], paths, "{config}")
    assert expanded == [str(tmp_path.resolve() / "{run_id}" / RUN_ID), "{config}"]


def test_a_template_is_not_mutated(paths: rundir.RunPaths) -> None:
    template = ["{python}", "{run_id}"]
    rundir.expand_command(template, paths, "py")
    assert template == ["{python}", "{run_id}"]


def test_a_shell_line_is_not_a_template(paths: rundir.RunPaths) -> None:
    with pytest.raises(TypeError, match="list of arguments"):
        rundir.expand_command("{python} -m x", paths, "py")


def test_environment_adds_the_run_variables(paths: rundir.RunPaths) -> None:
    base = {"PATH": "/bin", "FUSION_RUN_ID": "stale"}
    env = rundir.environment(paths, base)
    assert env == {
        "PATH": "/bin",
        "FUSION_RUN_ID": RUN_ID,
        "FUSION_RUN_DIR": str(paths.run_dir),
        "FUSION_CONFIG_FILE": str(paths.config_file),
        "FUSION_PROGRESS_FILE": str(paths.progress_file),
        "FUSION_OUTPUT_DIR": str(paths.output_dir),
    }
    assert base == {"PATH": "/bin", "FUSION_RUN_ID": "stale"}
    assert all(Path(env[name]).is_absolute() for name in env if name.endswith(("_DIR", "_FILE")))


@given(st.lists(st.text(max_size=30), max_size=6))
def test_tokens_without_placeholders_pass_unchanged(template: list[str]) -> None:
    placeholders = (
        "{python}",
        "{run_id}",
        "{run_dir}",
        "{config}",
        "{progress}",
        "{output_dir}",
        "{log}",
    )
    assume(not any(p in token for token in template for p in placeholders))
    paths = rundir.RunPaths.under(Path("/runs"), RUN_ID)
    assert rundir.expand_command(template, paths, "py") == template


# --- templates with overrides (SPEC §3) -----------------------------------------------------

TEMPLATE_INI = """\
[general_settings]
erlang_start = 300
max_iters = 2
route_method = k_shortest_path
request_distribution = {"25": 0.10, "100": 0.90}
Mixed_Case = kept
percent = 50%

[topology_settings]
network = NSFNet

"""


@pytest.fixture
def templates_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "templates"
    folder.mkdir()
    (folder / "minimal.ini").write_text(TEMPLATE_INI)
    return folder


def prepare_from(
    tmp_path: Path, templates_dir: Path, template: str, overrides: object
) -> rundir.RunPaths:
    return rundir.prepare(
        tmp_path / "runs", RUN_ID, json.dumps(overrides),
        template=template, templates_dir=templates_dir,
    )  # fmt: skip


@pytest.mark.parametrize("name", ["minimal", "minimal.ini"])
def test_a_template_named_by_stem_or_file_name_is_the_config_as_is(
    tmp_path: Path, templates_dir: Path, name: str
) -> None:
    paths = prepare_from(tmp_path, templates_dir, name, {})
    assert paths.config_file.read_text(encoding="utf-8") == TEMPLATE_INI
    assert mode(paths.config_file) == rundir.CONFIG_MODE


def test_overrides_replace_keys_and_add_keys_and_sections(
    tmp_path: Path, templates_dir: Path
) -> None:
    overrides = {
        "general_settings": {"max_iters": 5, "seed": 7, "Mixed_Case": False},
        "ml_settings": {"path_levels": [1, 2]},
    }
    paths = prepare_from(tmp_path, templates_dir, "minimal", overrides)
    written = as_dict(read_ini(paths.config_file.read_text(encoding="utf-8")))
    assert written == {
        "general_settings": {
            "erlang_start": "300", "max_iters": "5", "route_method": "k_shortest_path",
            "request_distribution": '{"25": 0.10, "100": 0.90}', "Mixed_Case": "False",
            "percent": "50%", "seed": "7",
        },
        "topology_settings": {"network": "NSFNet"},
        "ml_settings": {"path_levels": "[1,2]"},
    }  # fmt: skip


def test_overrides_are_validated_as_config_json_is(tmp_path: Path, templates_dir: Path) -> None:
    with pytest.raises(InvalidRun, match=r"config_json: value of s\.k contains a control char"):
        prepare_from(tmp_path, templates_dir, "minimal", {"s": {"k": "a\nb"}})
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("name", ["missing", "missing.ini", "MINIMAL", "minimal.INI", ""])
def test_a_missing_template_fails_naming_it_and_the_folder(
    tmp_path: Path, templates_dir: Path, name: str
) -> None:
    with pytest.raises(InvalidRun) as caught:
        prepare_from(tmp_path, templates_dir, name, {})
    assert repr(name) in str(caught.value)
    assert str(templates_dir) in str(caught.value)
    assert not (tmp_path / "runs").exists()  # nothing written for a run that cannot start


@pytest.mark.parametrize(
    "name", ["../templates/minimal", "sub/minimal", "/etc/passwd", "..", "a..b", "x\\y", "m\x00"]
)
def test_a_template_name_that_could_leave_the_folder_is_refused(
    tmp_path: Path, templates_dir: Path, name: str
) -> None:
    (templates_dir / "sub").mkdir()
    (templates_dir / "sub" / "minimal.ini").write_text(TEMPLATE_INI)
    with pytest.raises(InvalidRun, match="is not a template name: it contains"):
        prepare_from(tmp_path, templates_dir, name, {})
    assert not (tmp_path / "runs").exists()


def test_a_folder_is_not_a_template(tmp_path: Path, templates_dir: Path) -> None:
    (templates_dir / "folder.ini").mkdir()
    with pytest.raises(InvalidRun, match="template 'folder' not found"):
        prepare_from(tmp_path, templates_dir, "folder", {})


def test_a_malformed_template_fails_naming_the_file(tmp_path: Path, templates_dir: Path) -> None:
    (templates_dir / "broken.ini").write_text("no section header\n")
    with pytest.raises(InvalidRun, match=r"broken\.ini is not a valid INI file"):
        prepare_from(tmp_path, templates_dir, "broken", {})


def test_an_existing_config_ini_is_kept_and_its_template_not_needed(
    tmp_path: Path, templates_dir: Path
) -> None:
    run_dir = tmp_path / "runs" / RUN_ID
    run_dir.mkdir(parents=True)
    (run_dir / "config.ini").write_text("[the_guis_own]\nk = v\n")
    for name in ("minimal", "gone-since"):
        paths = prepare_from(tmp_path, templates_dir, name, {"s": {"k": 2}})
        assert paths.config_file.read_text() == "[the_guis_own]\nk = v\n"
    assert sorted(os.listdir(run_dir)) == ["config.ini", "logs", "output"]


def test_without_templates_dir_the_template_column_is_only_a_label(tmp_path: Path) -> None:
    paths = rundir.prepare(tmp_path, RUN_ID, '{"s": {"k": 1}}', template="../nowhere")
    assert paths.config_file.read_text() == "[s]\nk = 1\n\n"
