"""Command line of the attention test kit: ``python -m numpyllm.testing MODULE:FORWARD ...``.

Imports the candidate, runs the hypothesis search of ``check_attention`` and, when it
fails, prints the error and the shrunk failing case as a Python snippet that reruns it.
Exit status: 0 when every example passed, 1 on a failure, 2 for bad arguments.
"""

import argparse
import importlib
import sys

from .check import check_attention
from .problems import ALIGNMENTS

DTYPES = ("float32", "float64")


def load(spec):
    """``"package.module:name.attr"`` -> (the object, its module, its attribute path)."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"expected MODULE:FUNCTION (e.g. mykernels.flash:forward), got {spec!r}")
    obj = importlib.import_module(module_name)
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(f"{module_name} has no attribute {attribute!r} (from {spec!r})") from None
    if not callable(obj):
        raise ValueError(f"{spec} is a {type(obj).__name__}, not a callable")
    return obj, module_name, attribute


def snippet(problem, forward_spec, backward_spec=None, vjp_spec=None):
    """Python code that reruns ``problem`` on the candidate named by the specs."""
    specs = [spec for spec in (forward_spec, backward_spec, vjp_spec) if spec]
    modules = sorted({spec.partition(":")[0] for spec in specs})

    def name(spec):
        module_name, _, attribute = spec.partition(":")
        return f"{module_name}.{attribute}"

    arguments = [name(forward_spec)]
    if backward_spec:
        arguments.append(f"backward={name(backward_spec)}")
    if vjp_spec:
        arguments.append(f"vjp={name(vjp_spec)}")
    lines = [f"import {module}" for module in modules]
    lines += [
        "from numpyllm.testing import check_attention, make_attention_problem",
        "",
        f"problem = {problem!r}",
        f"check_attention({', '.join(arguments)}, problem=problem)",
    ]
    return "\n".join(lines)


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m numpyllm.testing", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("forward", metavar="MODULE:FORWARD",
        help="forward(q, k, v, causal=, scale=, [key_lengths=]) -> (out, lse) or out")
    backward = parser.add_mutually_exclusive_group()
    backward.add_argument("--backward", metavar="MODULE:FUNC",
                          help="numpyllm's backward(dout, q, k, v, out, lse, causal=, scale=, ...) -> (dq, dk, dv)")
    backward.add_argument("--vjp", metavar="MODULE:FUNC",
                          help="a vector-Jacobian product vjp(dout, q, k, v, causal=, scale=, ...) -> (dq, dk, dv)")
    add("--examples", type=int, default=50, metavar="N", help="problems to draw (default 50)")
    add("--causal-alignment", choices=ALIGNMENTS, default="bottom-right",
        help="what causal=True means to the candidate (default bottom-right; PyTorch's is_causal is top-left)")
    add("--no-causal", action="store_true", help="never pass causal=True")
    add("--no-key-lengths", action="store_true", help="never pass key_lengths (a candidate without padding)")
    add("--no-grouped-heads", action="store_true", help="keep k, v with as many heads as q")
    add("--dtypes", nargs="+", choices=DTYPES, default=list(DTYPES), help="dtypes to draw (default both)")
    add("--max-len", type=int, default=260, metavar="N", help="longest Nq, Nk (default 260)")
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.examples < 1 or args.max_len < 1:
        parser.error("--examples and --max-len must be >= 1")
    try:
        forward = load(args.forward)[0]
        backward = load(args.backward)[0] if args.backward else None
        vjp = load(args.vjp)[0] if args.vjp else None
    except (ImportError, ValueError) as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")

    failures = []
    try:
        check_attention(
            forward, backward, vjp=vjp, max_examples=args.examples, on_failure=failures.append,
            dtypes=tuple(args.dtypes), max_len=args.max_len, causal=False if args.no_causal else None,
            key_lengths=not args.no_key_lengths, grouped_heads=not args.no_grouped_heads,
            causal_alignment=args.causal_alignment,
        )
    except Exception as exc:  # the candidate's failure, whatever it raised
        if not failures:  # not a candidate's failure: the kit or hypothesis itself
            raise
        print(f"FAILED: {type(exc).__name__}: {exc}\n")
        print("Shrunk failing case, as a snippet that reruns it:\n")
        print(snippet(failures[-1], args.forward, args.backward, args.vjp))
        return 1
    checked = "forward" + (" and backward" if backward or vjp else "")
    print(f"OK: {checked} matched numpyllm's reference on {args.examples} drawn problems.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
