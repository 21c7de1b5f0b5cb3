"""Command-line flags from a training config dataclass: one --flag per field, shared by every train command."""

import dataclasses
import os
import sys

from ..loop import flag

__all__ = ["add_config_arguments", "config_overrides", "add_run_arguments", "run_command"]

_TYPES = {int: int, float: float, str: str, tuple: str, bool: None}


def add_run_arguments(parser, presets, preset_help, resumable, out_prefix=""):
    """--preset, --out, --resume and --no-progress, the options of every train command.

    The default --out is runs/<out_prefix>PRESET (run_command must be given the same prefix)."""
    parser.add_argument("--preset", default="tiny", choices=list(presets),
                        help=f"starting values of every option: {preset_help} (default: tiny)")
    parser.add_argument("--out", metavar="DIR", help=f"run directory (default: runs/{out_prefix}PRESET)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the checkpoint in --out exactly; may change only "
                             + ", ".join(flag(name) for name in resumable))
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bar: print a line every --log-interval steps "
                             "(the default when stderr is not a terminal)")


def add_config_arguments(parser, config_class, tiny):
    """One --flag per field of ``config_class``, its help ending with the tiny preset's value."""
    for field in dataclasses.fields(config_class):
        kwargs = dict(help=field.metadata["help"], **field.metadata["argparse"])
        if field.type is bool:
            kwargs.update(action="store_const", const=True)
        else:
            kwargs.setdefault("type", _TYPES[field.type])
            if "choices" not in kwargs:
                kwargs.setdefault("metavar", {int: "N", float: "X", str: "NAME"}.get(kwargs["type"]))
        preset_value = getattr(tiny, field.name)
        kwargs["help"] += "" if preset_value is None else f" (tiny: {preset_value})"
        parser.add_argument(flag(field.name), default=None, **kwargs)


def config_overrides(args, config_class):
    """The fields given on the command line, as a dict of field name -> value."""
    return {field.name: getattr(args, field.name) for field in dataclasses.fields(config_class)
            if getattr(args, field.name) is not None}


def run_command(command, train, args, overrides, out_prefix=""):
    """Run ``train(out, preset, overrides, resume=, progress=)`` for ``args``; return the exit status.

    --data paths become absolute, so a resume from another directory can re-read them; the
    bar shows unless --no-progress or stderr is not a terminal.
    """
    for name in ("data", "val"):
        if isinstance(overrides.get(name), tuple):
            overrides[name] = tuple(os.path.abspath(path) for path in overrides[name])
        elif isinstance(overrides.get(name), str):
            overrides[name] = os.path.abspath(overrides[name])
    out = args.out or os.path.join("runs", out_prefix + args.preset)
    progress = not args.no_progress and sys.stderr.isatty()
    try:
        return train(out, args.preset, overrides, resume=args.resume, progress=progress)
    except KeyboardInterrupt:
        print(f"numpyllm {command}: interrupted", file=sys.stderr)
        return 130
