"""`fusion-runner submit` (one run, a batch of files, a sweep) and `fusion-runner rerun`.

`submit a.ini b.ini --sweep SECTION.KEY=V1,V2 ...` queues one run per file and
per combination of the sweep values (the cartesian product: files outermost,
then each --sweep in the order given, the last varying fastest), all in one
transaction, started in that order. Each run of a sweep is named after its
varied values: `<base> <key>=<value> ...`, where the base is --name (or the
file's stem; with --name and several files, `<name> <stem>`) and the key is the
bare key, or `section.key` where two sweeps share a key name; a name is cut to
255 characters (String(255), SPEC §1), ending with `...`.

Every key of every run is checked against the keys FUSION knows
(`core.keycheck`): one warning per unknown key on stderr, with the closest
known one; with --strict it is an error (exit status 2) and nothing is inserted.

`rerun ID [--set ...] [--name N]` queues a new run with the run's config_json
and template (plus the --set changes), its parent kept in fusion_runner_meta.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fusion_runner.cli import lookup
from fusion_runner.cli.exitcodes import EXIT_FAILURE, EXIT_OK, EXIT_USAGE
from fusion_runner.cli.lookup import UsageError
from fusion_runner.core import config as config_module
from fusion_runner.core import inifile, keycheck, runconfig, rundir
from fusion_runner.core.errors import InvalidRun, SchemaError, UnknownRun
from fusion_runner.core.metaverbs import NewRun
from fusion_runner.core.store import Store

MAX_NAME, MAX_TEMPLATE = 255, 100  # String(255), String(100) of SPEC §1
MAX_RUNS = 10_000  # a sweep larger than this is a mistake more often than not
ELLIPSIS = "..."

Config = dict[str, dict[str, object]]


@dataclass(frozen=True)
class Sweep:
    section: str
    key: str
    values: tuple[tuple[str, object], ...]  # (text as given, typed value)


@dataclass
class Planned:
    name: str
    template: str
    config: Config
    overrides: Config = field(default_factory=dict)  # --set and the sweep's values
    run_id: str = field(default_factory=rundir.new_run_id)


def add_submit_arguments(submit: argparse.ArgumentParser) -> None:
    submit.add_argument("ini", nargs="+", metavar="CONFIG.ini", type=Path,
                        help="one or more INI files (one run each, times the sweep)")
    submit.add_argument("--name", help="display name (default: the file's stem); "
                                       "with --sweep the prefix of each run's name")
    submit.add_argument("--template", help="template name (default: the file's name)")
    submit.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="set or override one value of the INI file (repeatable)")
    submit.add_argument("--sweep", action="append", default=[],
                        metavar="SECTION.KEY=V1,V2,...",
                        help="one run per value (repeatable: every combination); "
                             "each run is named after its values")
    submit.add_argument("--strict", action="store_true",
                        help="a key FUSION does not know is an error, not a warning")
    submit.add_argument("--json", action="store_true",
                        help='print {"id", "name", "config"}; a list of them for several '
                             "files or --sweep (config: the --set and sweep values)")


def add_rerun_arguments(rerun: argparse.ArgumentParser, id_help: str) -> None:
    rerun.add_argument("id", metavar="ID", help=id_help)
    rerun.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="change one value of the run's config (repeatable)")
    rerun.add_argument("--name", help='display name (default: "<its name> (rerun)")')
    rerun.add_argument("--strict", action="store_true",
                       help="a --set key FUSION does not know is an error, not a warning")
    rerun.add_argument("--json", action="store_true",
                       help='print {"id", "name", "parent_id", "config"} '
                            "(config: the --set values)")


# --- submit ----------------------------------------------------------------------------


def cmd_submit(args: argparse.Namespace, settings: config_module.Config) -> int:
    sweeps = [parse_sweep(text) for text in args.sweep]
    plan = plan_runs(args.ini, args.set, sweeps, args.name, args.template)
    with lookup.open_store(settings) as store:
        # After the database is found: a wrong database is one line, not warnings first.
        if not report_unknown_keys([run.config for run in plan], args.strict):
            return EXIT_USAGE
        for run in plan if args.priority else ():  # before its row: never claimed without it
            store.set_priority(run.run_id, args.priority)
        store.insert_runs([NewRun(run.run_id, run.name, inifile.to_config_json(run.config),
                                  run.template) for run in plan])
    if args.json:
        shown = [{"id": run.run_id, "name": run.name, "config": run.overrides} for run in plan]
        single = len(args.ini) == 1 and not sweeps
        print_json(shown[0] if single else shown)
    else:
        for run in plan:
            print(run.run_id)
    return EXIT_OK


def plan_runs(files: Sequence[Path], assignments: Sequence[str], sweeps: Sequence[Sweep],
              name: str | None, template: str | None) -> list[Planned]:
    """Every run the command queues, checked: UsageError before anything is inserted."""
    settings = [parse_setting(text) for text in assignments]
    swept = {(sweep.section, sweep.key) for sweep in sweeps}
    if len(swept) < len(sweeps):
        raise UsageError("--sweep: the same key is swept twice")
    for section, key, _ in settings:
        if (section, key) in swept:
            raise UsageError(f"--set {section}.{key} is also swept by --sweep")
    count = len(files)
    for sweep in sweeps:
        count *= len(sweep.values)
    if count > MAX_RUNS:
        raise UsageError(f"that is {count} runs; at most {MAX_RUNS} at once")
    if template is not None and len(template) > MAX_TEMPLATE:
        raise UsageError(f"--template is at most {MAX_TEMPLATE} characters")
    labels = sweep_labels(sweeps)
    plan: list[Planned] = []
    for path in files:
        base_config = read_config(path)
        base = (name if len(files) == 1 else f"{name} {path.stem}") if name else path.stem
        run_template = template if template is not None else path.name
        if len(run_template) > MAX_TEMPLATE:
            raise UsageError(f"{path}: the template name (the file's name) is at most "
                             f"{MAX_TEMPLATE} characters; give --template")
        for combination in itertools.product(*(sweep.values for sweep in sweeps)):
            config = {section: dict(options) for section, options in base_config.items()}
            overrides: Config = {}
            for section, key, value in settings:
                config.setdefault(section, {})[key] = value
                overrides.setdefault(section, {})[key] = value
            varied = []
            for sweep, label, (text, value) in zip(sweeps, labels, combination, strict=True):
                config.setdefault(sweep.section, {})[sweep.key] = value
                overrides.setdefault(sweep.section, {})[sweep.key] = value
                varied.append(f"{label}={text}")
            run_name = " ".join([base, *varied])
            if not sweeps and len(run_name) > MAX_NAME:
                raise UsageError(f"--name is at most {MAX_NAME} characters")
            check_config(path, config)
            plan.append(Planned(shorten(run_name), run_template, config, overrides))
    return plan


def read_config(path: Path) -> Config:
    try:
        return inifile.read_ini(path)
    except InvalidRun as error:
        raise UsageError(str(error)) from None


def check_config(origin: Path | str, config: Config) -> None:
    """What the daemon would refuse (SPEC §3), refused here: nothing is inserted."""
    try:
        runconfig.parse_config_json(inifile.to_config_json(config))
    except InvalidRun as error:
        raise UsageError(f"{origin}: {error}") from None


def parse_setting(assignment: str) -> tuple[str, str, object]:
    """`section.key=value` -> (section, key, value typed as an INI file's would be)."""
    target, equals, text = assignment.partition("=")
    section, dot, key = target.strip().partition(".")
    if not (equals and dot and section and key.strip()):
        raise UsageError(f"--set {assignment!r}: expected section.key=value")
    return section, key.strip(), inifile.ini_value(text.strip())


def apply_setting(config: Config, assignment: str) -> None:
    """`section.key=value` into config; the value typed as an INI file's would be."""
    section, key, value = parse_setting(assignment)
    config.setdefault(section, {})[key] = value


def parse_sweep(text: str) -> Sweep:
    """`section.key=v1,v2,...` (values as --set types them; none empty, none twice)."""
    target, equals, values = text.partition("=")
    section, dot, key = target.strip().partition(".")
    key = key.strip()
    pieces = [piece.strip() for piece in values.split(",")]
    if not (equals and dot and section and key) or not all(pieces):
        raise UsageError(f"--sweep {text!r}: expected section.key=value1,value2,...")
    if len(set(pieces)) < len(pieces):
        raise UsageError(f"--sweep {text!r}: a value is given twice")
    return Sweep(section, key, tuple((piece, inifile.ini_value(piece)) for piece in pieces))


def sweep_labels(sweeps: Sequence[Sweep]) -> list[str]:
    """How each swept key appears in a run's name: the bare key, unless two sweeps share it."""
    names = [sweep.key for sweep in sweeps]
    return [sweep.key if names.count(sweep.key) == 1 else f"{sweep.section}.{sweep.key}"
            for sweep in sweeps]


def shorten(name: str) -> str:
    return name if len(name) <= MAX_NAME else name[:MAX_NAME - len(ELLIPSIS)] + ELLIPSIS


def report_unknown_keys(configs: Sequence[Mapping[str, Mapping[str, object]]],
                        strict: bool) -> bool:
    """One line on stderr per unknown key; whether the command may go on."""
    found = keycheck.check(configs)
    kind = "error" if strict else "warning"
    for unknown in found:
        print(f"fusion-runner: {kind}: {unknown.message()}", file=sys.stderr)
    if strict and found:
        print(f"fusion-runner: --strict: {len(found)} unknown "
              f"key{'s' if len(found) != 1 else ''}; nothing queued", file=sys.stderr)
        return False
    return True


def print_json(value: object) -> None:
    print(json.dumps(value, indent=2))


# --- rerun -----------------------------------------------------------------------------


def cmd_rerun(args: argparse.Namespace, settings: config_module.Config) -> int:
    changes = [parse_setting(text) for text in args.set]
    overrides: Config = {}
    for section, key, value in changes:
        overrides.setdefault(section, {})[key] = value
    if args.name is not None and len(args.name) > MAX_NAME:
        raise UsageError(f"--name is at most {MAX_NAME} characters")
    with lookup.open_store(settings) as store:
        parent_id = lookup.resolve(store, args.id)
        parent = store.get_run(parent_id)
        if parent is None:
            raise UnknownRun(f"no run with id {args.id!r}")
        require_meta_table(store)
        config_json = str(parent.config_json)
        if changes:  # unchanged, the parent's text is copied as it is
            try:
                config = runconfig.parse_config_json(config_json)
            except InvalidRun as error:
                print(f"fusion-runner: run {parent_id}'s config_json cannot take --set: {error}",
                      file=sys.stderr)
                return EXIT_FAILURE
            for section, options in overrides.items():
                config.setdefault(section, {}).update(options)
            check_config("--set", config)
            config_json = inifile.to_config_json(config)
        if not report_unknown_keys([overrides], args.strict):
            return EXIT_USAGE
        name = args.name if args.name is not None else rerun_name(
            parent.name or parent_id,
            [f"{key}={text.partition('=')[2].strip()}" for (_, key, _), text
             in zip(changes, args.set, strict=True)])
        run_id = rundir.new_run_id()
        store.insert_runs([NewRun(run_id, name, config_json, str(parent.template),
                                  parent_id=parent_id)])
    if args.json:
        print_json({"id": run_id, "name": name, "parent_id": parent_id, "config": overrides})
    else:
        print(run_id)
    return EXIT_OK


def rerun_name(parent_name: str, changes: Sequence[str]) -> str:
    """`<parent> (rerun)`, or `<parent> (rerun: key=value ...)` with --set changes."""
    what = f"rerun: {' '.join(changes)}" if changes else "rerun"
    suffix = f" ({what})"
    if len(parent_name) + len(suffix) <= MAX_NAME:
        return parent_name + suffix
    return shorten(parent_name[:MAX_NAME - len(suffix) - len(ELLIPSIS)] + ELLIPSIS + suffix)


def require_meta_table(store: Store) -> None:
    if not store.has_meta_table():
        raise SchemaError("the database has no fusion_runner_meta table, where a rerun's parent "
                          "is kept: start the fusion-runner daemon of this version once")
