"""`bonfast train | eval | bench`.

    bonfast train                          the embedded default: tiny model, arithmetic, warm start, BoN-RLB(P)
    bonfast train --preset smollm2-svamp  a named preset; any field can still be overridden
    bonfast train --method bon_rl_v --verifier noisy --verifier_fpr 0.2 --n 16 --n_bon 8
    bonfast eval --out_dir runs/default    pass@k / BoK / majority table and plot of a run's checkpoint
    bonfast bench [pytest args]            the kernel benchmark suites (pytest-benchmark)
    torchrun --nproc_per_node=K -m bonfast.cli train ...   data parallel over K processes, FSDP2 (docs/scale.md)

Every field of `bonfast.config.TrainConfig` is a `--flag` (tuples as comma-separated lists).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import typing

from bonfast.config import PRESETS, TrainConfig, preset


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


def _parser_for(fields, hints, comments, parser):
    for f in fields:
        tp = hints[f.name]
        default = f.default if f.default is not dataclasses.MISSING else None
        helptext = f"{comments.get(f.name, '')} (default: {default})"
        origin = typing.get_origin(tp)
        if tp is bool:
            parser.add_argument(f"--{f.name}", type=_bool, default=None, metavar="BOOL", help=helptext)
        elif origin is tuple:
            elem = typing.get_args(tp)[0]
            parser.add_argument(f"--{f.name}", type=_tuple_of(elem), default=None, metavar="A,B,...", help=helptext)
        else:
            base = next((t for t in typing.get_args(tp) if t is not type(None)), tp) if origin else tp
            # torchrun's own parser rejects `--n` (an ambiguous prefix of --nnodes / --nproc_per_node)
            alias = ("--n_samples",) if f.name == "n" else ()
            parser.add_argument(f"--{f.name}", *alias, type=base, default=None, help=helptext)


def _bool(s: str) -> bool:
    if s.lower() in ("1", "true", "yes", "on"):
        return True
    if s.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {s!r}")


def _tuple_of(elem):
    def parse(s: str):
        try:
            return tuple(elem(x) for x in s.split(",") if x.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {elem.__name__}, got {s!r}")
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bonfast", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    hints = typing.get_type_hints(TrainConfig)
    comments = _field_comments()
    fields = dataclasses.fields(TrainConfig)
    commands = (("train", "BoN-aware fine-tuning run (default: the embedded arithmetic run)"),
                ("eval", "evaluate a run's checkpoint (or a base model) on a task: BoN / pass@k table + plot"))
    for name, helptext in commands:
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--preset", default="default", choices=sorted(PRESETS),
                       help="named preset to start from (default: default)")
        _parser_for(fields, hints, comments, p)
    b = sub.add_parser("bench", help="run the benchmark suites (extra args go to pytest)")
    b.add_argument("pytest_args", nargs=argparse.REMAINDER)
    return parser


def config_from_args(args) -> TrainConfig:
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
                 if getattr(args, f.name, None) is not None}
    return preset(args.preset, **overrides)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv or ["train"])
    if args.command == "bench":
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        cmd = [sys.executable, "-m", "pytest", os.path.join(root, "benches"), "-p", "no:cacheprovider",
               "--benchmark-columns=min,mean,stddev,rounds", "--benchmark-group-by=group", *args.pytest_args]
        return subprocess.call(cmd, cwd=root)
    try:
        cfg = config_from_args(args).validate()
    except (ValueError, TypeError) as e:
        parser.exit(2, f"bonfast {args.command}: error: {e}\n")
    if args.command == "train":
        from bonfast import distributed
        from bonfast.train import train
        try:
            train(cfg)
        finally:
            distributed.shutdown()  # under torchrun: leave the process group cleanly
        return 0
    from bonfast.evaluate import evaluate_checkpoint
    evaluate_checkpoint(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
