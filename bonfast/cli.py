"""`bonfast train | eval | bench`.

    bonfast train                          the embedded default: tiny model, arithmetic, warm start, BoN-RLB(P)
    bonfast train --preset smollm2-svamp   a named preset; any field can still be overridden
    bonfast train --method bon_rl_v --verifier noisy --verifier_fpr 0.2 --n 16 --n_bon 8
    bonfast train --resume true            continue the run in out_dir (--overwrite true replaces it instead)
    bonfast eval --out_dir runs/default    pass@k / BoK / majority@k table and plot of a run's checkpoint
    bonfast bench [SUITES...] [OPTIONS]    the benchmark suites (pytest-benchmark); `bonfast bench --help`
    torchrun --nproc_per_node=K -m bonfast.cli train ...   data parallel over K processes, FSDP2 (docs/scale.md)

Every field of `bonfast.config.TrainConfig` is a `--flag` (lists as comma-separated values: --eval_ks 1,2,4,8).
A mistake in the input (a bad value, an existing run directory, an unreadable checkpoint, a task the model's
tokenizer cannot encode) ends with one line `bonfast <command>: error: ...` and exit status 2; `--debug true`
shows the traceback instead. Ctrl-C during training stops at the end of the current step, writes a checkpoint
and exits with status 130 (a second Ctrl-C stops at once).
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import glob
import json
import os
import subprocess
import sys
import typing

from bonfast.config import PRESETS, TrainConfig, preset

__all__ = ["build_parser", "config_from_args", "main", "bench_suites"]

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH_DIR = os.path.join(ROOT, "benches")


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage block): `bonfast train: error: argument --n: ...`."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


# ------------------------------------------------------------------------------------------------------------
# TrainConfig fields as flags


def _field_comments() -> dict[str, str]:
    """The comment after each field in config.py, used as its --help text."""
    import inspect

    from bonfast import config
    comments = {}
    for line in inspect.getsource(config.TrainConfig).splitlines():
        name, _, rest = line.strip().partition(":")
        if "#" in rest and name.isidentifier():
            comments[name] = rest.split("#", 1)[1].strip()
    return comments


def _choices() -> dict[str, str]:
    """The accepted values of the fields that take a name, as listed by --help."""
    from bonfast import tasks
    from bonfast.objectives import METHODS, OBJECTIVES
    listed = {
        "method": ", ".join(METHODS),
        "task": ", ".join(tasks.TASKS) + ", or an import path pkg.module:Class",
        "verifier": ", ".join(v for v in tasks.VERIFIERS if v != "callable") + ", or an import path pkg.module:Name",
    }
    for method, objective in OBJECTIVES.items():
        for option, allowed in objective.options.items():
            if allowed is not None:
                listed[f"{method}_{option}"] = ", ".join(map(str, allowed))
    return listed


def format_value(value) -> str:
    """A value as it is written on the command line: 1,2,4,8 for a tuple, true / false, none."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return ",".join(format_value(v) for v in value)
    return "none" if value is None else str(value)


def _add_fields(parser, fields, hints, comments, choices):
    for f in fields:
        tp = hints[f.name]
        default = f.default if f.default is not dataclasses.MISSING else None
        helptext = comments.get(f.name, "")
        if f.name in choices:
            helptext += f"; one of: {choices[f.name]}"
        helptext = f"{helptext} (default: {format_value(default)})".replace("%", "%%")
        origin = typing.get_origin(tp)
        if tp is bool:
            parser.add_argument(f"--{f.name}", type=_bool, default=None, metavar="true|false", help=helptext)
        elif origin is tuple:
            elem = typing.get_args(tp)[0]
            parser.add_argument(f"--{f.name}", type=_tuple_of(elem), default=None, metavar="A,B,...", help=helptext)
        else:
            base = next((t for t in typing.get_args(tp) if t is not type(None)), tp) if origin else tp
            optional = type(None) in typing.get_args(tp)  # `--field none` is accepted (the default)
            # torchrun's own parser rejects `--n` (an ambiguous prefix of --nnodes / --nproc_per_node)
            alias = ("--n_samples",) if f.name == "n" else ()
            parser.add_argument(f"--{f.name}", *alias, type=_scalar(base, optional), default=None,
                                metavar=base.__name__.upper(), help=helptext)


def _bool(s: str) -> bool:
    if s.lower() in ("1", "true", "yes", "on"):
        return True
    if s.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {s!r}")


def _scalar(tp, optional: bool = False):
    def parse(s: str):
        if optional and s.lower() == "none":
            return None
        try:
            return tp(s)
        except ValueError:
            what = {int: "an integer", float: "a number"}.get(tp, tp.__name__)
            raise argparse.ArgumentTypeError(f"expected {what}, got {s!r}") from None
    return parse


def _tuple_of(elem):
    def parse(s: str):
        try:
            return tuple(elem(x) for x in s.split(",") if x.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {elem.__name__}, "
                                             f"e.g. 1,2,4, got {s!r}") from None
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="bonfast", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="{train,eval,bench}")
    hints = typing.get_type_hints(TrainConfig)
    comments = _field_comments()
    choices = _choices()
    fields = dataclasses.fields(TrainConfig)
    commands = (("train", "BoN-aware fine-tuning run (default: the embedded arithmetic run)"),
                ("eval", "evaluate a run's checkpoint (out_dir): pass@k / BoK / majority@k table + plot"))
    for name, helptext in commands:
        p = sub.add_parser(name, help=helptext, description=helptext,
                           usage=f"bonfast {name} [--preset NAME] [--FIELD VALUE ...]  (the fields are listed below)")
        p.add_argument("--preset", default=None, choices=sorted(PRESETS), metavar="NAME",
                       help=f"named preset to start from; one of: {', '.join(PRESETS)} (default: default)")
        p.add_argument("--debug", type=_bool, default=False, metavar="true|false",
                       help="show the full traceback of an error instead of one line (default: false)")
        if name == "eval":
            p.add_argument("--base", type=_bool, default=False, metavar="true|false",
                           help="evaluate the starting policy (the tiny model's warm start, or --model as loaded) "
                                "instead of out_dir's checkpoint (default: false)")
        _add_fields(p, fields, hints, comments, choices)
    sub.add_parser("bench", help="run the benchmark suites (see `bonfast bench --help`)", add_help=False)
    return parser


def _explicit(args) -> dict:
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
            if getattr(args, f.name, None) is not None}


def config_from_args(args) -> TrainConfig:
    """The preset (default: "default") with the flags given on the command line."""
    return preset(args.preset or "default", **_explicit(args))


def _eval_config(args) -> tuple[TrainConfig, str | None]:
    """`bonfast eval`: out_dir's config.json when there is one (the run's own model and settings), else the preset;
    flags given on the command line override either. Returns (config, the config.json it came from or None)."""
    overrides = _explicit(args)
    out_dir = overrides.get("out_dir") or PRESETS[args.preset or "default"].get("out_dir", TrainConfig.out_dir)
    path = os.path.join(out_dir, "config.json")
    if args.preset is not None or args.base or not os.path.isfile(path):
        return config_from_args(args), None
    from bonfast.checkpoint import UserError
    try:
        with open(path) as f:
            saved = json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: expected the run's JSON config, could not read it ({e})") from None
    hints = typing.get_type_hints(TrainConfig)
    values = {}
    for f in dataclasses.fields(TrainConfig):
        if f.name in saved:
            v = saved[f.name]
            values[f.name] = tuple(v) if typing.get_origin(hints[f.name]) is tuple and v is not None else v
    values.update(overrides)
    return TrainConfig(**{**values, "resume": False, "overwrite": False}), path


# ------------------------------------------------------------------------------------------------------------
# bonfast bench


def bench_suites() -> dict[str, str]:
    """Suite name -> file: every benches/bench_<name>.py."""
    return {os.path.basename(p)[len("bench_"):-len(".py")]: p
            for p in sorted(glob.glob(os.path.join(BENCH_DIR, "bench_*.py")))}


def _shape_presets() -> dict:
    sys.path.insert(0, BENCH_DIR)
    try:
        from benchkit import SHAPE_PRESETS
        return SHAPE_PRESETS
    except ImportError:
        return {}
    finally:
        sys.path.remove(BENCH_DIR)


def _bench_help() -> str:
    suites = bench_suites()
    shapes = _shape_presets()
    lines = [
        "usage: bonfast bench [SUITE ...] [OPTION ...] [-- PYTEST_ARG ...]",
        "",
        "Runs the benchmark suites (benches/bench_<suite>.py, pytest-benchmark) with pytest from the repository",
        "root, prints the command it ran and where the results went (a JSON file under runs/bench/ unless you pass",
        "--benchmark-json, --benchmark-disable or --collect-only). Suites come first (default: all); every",
        "option, and everything after `--`, goes to pytest unchanged. Without --shapes (or BONFAST_BENCH_SHAPES)",
        "the quick defaults apply, so that a plain `bonfast bench` is a smoke run of every case on a laptop CPU:",
        "--shapes tiny --modes full --bench-rounds 1 --no-memory, BONFAST_PACKING_SHAPES=qwen-tiny (an option",
        "or variable you set replaces its default).",
        "With --shapes, the suites' own defaults apply (3 rounds, fwd/bwd/full, peak memory). CUDA-only cases",
        "skip on a machine without a GPU.",
        "",
        "suites:",
        *(f"  {name:20s} {os.path.relpath(path, ROOT)}" for name, path in suites.items()),
        "",
        "shape presets (--shapes NAME, or 'T,D,V[,dtype];...'):",
        *(f"  {name:12s} {', '.join(f'({t},{d},{v},{dt})' for t, d, v, dt in s)}" for name, s in shapes.items()),
        "",
        "options of the suites: --shapes, --providers a,b, --modes fwd,bwd,full, --bench-rounds N, --no-memory;",
        "any pytest / pytest-benchmark option (-k, -q, -s, --co, --benchmark-json PATH, --benchmark-disable, ...).",
        "",
        "examples:",
        "  bonfast bench                                       every suite, quick defaults",
        "  bonfast bench bon_loss linear_logprobs --shapes cpu-small       full measurement on CPU shapes",
        "  bonfast bench --co -q                               list the cases without running them",
        "  bonfast bench packing -k packed --benchmark-json out.json",
        "  bonfast bench linear_logprobs -- --providers naive,bonfast_torch --modes full",
    ]
    return "\n".join(lines)


def _bench(argv: list[str]) -> int:
    """`bonfast bench [SUITES...] [OPTIONS...] [-- PYTEST_ARGS...]`."""
    if "--" in argv:
        cut = argv.index("--")
        argv, tail = argv[:cut], argv[cut + 1:]
    else:
        tail = []
    if any(a in ("-h", "--help") for a in argv):
        print(_bench_help())
        return 0
    suites = bench_suites()
    if not suites:
        print(f"bonfast bench: error: no benches/bench_*.py under {ROOT} (the suites ship with a source checkout)",
              file=sys.stderr)
        return EXIT_USAGE
    targets, i = [], 0
    while i < len(argv) and not argv[i].startswith("-"):  # leading positionals: suites
        name = argv[i]
        path = name.split("::")[0]
        if name in suites or f"bench_{name}" in suites:
            targets.append(suites[name if name in suites else f"bench_{name}"])
        elif os.path.basename(path).startswith("bench_") and os.path.exists(os.path.join(BENCH_DIR,
                                                                                         os.path.basename(path))):
            targets.append(os.path.abspath(name) if os.path.exists(path) else os.path.join(BENCH_DIR, name))
        else:
            print(f"bonfast bench: error: unknown suite {name!r}; expected one of {', '.join(suites)} or a "
                  "benches/bench_*.py path", file=sys.stderr)
            return EXIT_USAGE
        i += 1
    extra = argv[i:] + tail
    names = " ".join(extra)
    cmd = [sys.executable, "-m", "pytest", *(targets or [BENCH_DIR]), "-o", "python_files=bench_*.py",
           "-p", "no:cacheprovider", "--benchmark-columns=min,mean,stddev,rounds", "--benchmark-group-by=group"]
    env = dict(os.environ)
    if "--shapes" not in names and "BONFAST_BENCH_SHAPES" not in os.environ:
        # quick defaults: a smoke-sized run of every case; any of them given explicitly wins
        quick = {"--shapes": "tiny", "--modes": "full", "--bench-rounds": "1", "--no-memory": None}
        for option, value in quick.items():
            if option not in names:
                cmd += [option] if value is None else [option, value]
        env.setdefault("BONFAST_PACKING_SHAPES", "qwen-tiny")  # bench_packing's own model-shape switch
    results = None
    collect_only = any(a in ("--co", "--collect-only") for a in extra)
    if not collect_only and "--benchmark-disable" not in names and "--benchmark-json" not in names:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        results = os.path.abspath(os.path.join("runs", "bench", f"bench-{stamp}.json"))
        os.makedirs(os.path.dirname(results), exist_ok=True)
        cmd.append(f"--benchmark-json={results}")
    cmd += extra
    shown = " ".join(os.path.relpath(c, ROOT) if os.path.isabs(c) and c.startswith(ROOT) else c for c in cmd[1:])
    packing = f"BONFAST_PACKING_SHAPES={env['BONFAST_PACKING_SHAPES']} " if "BONFAST_PACKING_SHAPES" in env else ""
    print(f"bonfast bench: running (in {ROOT}): {packing}python {shown}", flush=True)
    rc = subprocess.call(cmd, cwd=ROOT, env=env)
    if results is not None and os.path.exists(results):
        print(f"bonfast bench: results in {results} (pytest exit status {rc})")
    elif results is None and "--benchmark-json" in names:
        print(f"bonfast bench: results in the --benchmark-json file you named (pytest exit status {rc})")
    else:
        print(f"bonfast bench: no results file (nothing timed; pytest exit status {rc})")
    return rc


# ------------------------------------------------------------------------------------------------------------
# main


def _current_checkpoint(out_dir: str) -> str:
    """'checkpoint <path> (step k)' of out_dir, or a note that there is none."""
    from bonfast import distributed
    from bonfast.checkpoint import CHECKPOINT
    try:
        latest = distributed.newest_checkpoint(out_dir, CHECKPOINT)
    except Exception:  # noqa: BLE001 - an unreadable file is reported as such
        latest = None
    if latest is None:
        return f"no checkpoint in {out_dir} yet"
    where = CHECKPOINT if latest[0] == "safetensors" else distributed.DCP_DIR
    return f"checkpoint {os.path.join(out_dir, where)} (step {latest[1]}) is current; continue with --resume true"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "bench":
        return _bench(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv or ["train"])
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    from bonfast.checkpoint import UserError
    command = f"bonfast {args.command}"
    cfg = None
    try:
        if args.command == "train":
            cfg = config_from_args(args).validate()
            from bonfast import distributed
            from bonfast.train import train
            try:
                train(cfg)
            finally:
                distributed.shutdown()  # under torchrun: leave the process group cleanly
            return 0
        cfg, source = _eval_config(args)
        cfg.validate()
        from bonfast.evaluate import evaluate_checkpoint
        if source:
            print(f"config: {source} (the run's own settings; flags given here override them)")
        evaluate_checkpoint(cfg, base=args.base)
        return 0
    except KeyboardInterrupt as e:
        if args.debug:
            raise
        message = str(e) or (_current_checkpoint(cfg.out_dir) if cfg is not None and args.command == "train"
                             else "nothing written")
        print(f"\n{command}: interrupted; {message}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (UserError, ValueError, TypeError) as e:
        # user errors: the named exception, and the validation errors that name a TrainConfig field
        if args.debug or not (isinstance(e, UserError) or str(e).startswith(("TrainConfig.", "preset:"))):
            raise
        print(f"{command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
