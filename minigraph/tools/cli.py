"""The `minigraph` command (console script and `python -m minigraph`): argument parsing and
dispatch. The work lives in minigraph.tools' dump, profile, compare, trace, test_backend_ops,
graph_ops (export-ops) and warmup.

Exit status: 0 fine, 1 a divergence, a failing test or a node that is not finite (trace
--stop-at-nan), 2 a usage error, a bad target or any other refusal (printed as one short
message, with the user's own traceback frame when their file raised).
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, TextIO

from minigraph.core.errors import MinigraphError
from minigraph.core.version import __version__

TARGET_HELP = ("path/file.py:function (called as function(ctx, **params), returns the output tensor or "
               "tensors), a graph file written by mg.save_graph, or a GGUF model file (FILE.gguf: its "
               "tensors and metadata are listed)")
GGUF_HELP = ("take the target's weights from a GGUF file: each leaf named like one of its tensors gets "
             "that tensor's bytes (memory-mapped, no copy); a leaf named *.weight or *.bias must be in the "
             "file with the same type and ne")
PROFILE_HELP = ("run the graph (random inputs for leafs without data) and time every node: each compute "
                "node runs ALONE as a one-node graph on the backend the scheduler placed it on, warm-up "
                "then the median of --repeat runs; adds time, share, cumulative share, GFLOP/s "
                "(OpDef.flops) and GB/s (ggml_nbytes of the node and its sources)")


def _target_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", help=TARGET_HELP)
    p.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE",
                   help="keyword parameter for the target function (repeatable; Python literals)")
    p.add_argument("--no-fuse", action="store_true", help="the graph as written (skip mg.optimize)")
    p.add_argument("--seed", type=int, default=0, help="seed for random inputs of leafs without data")
    p.add_argument("--gguf", metavar="FILE.gguf", help=GGUF_HELP)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="minigraph",
                                 description="minigraph tools: dump, compare, trace, test-backend-ops, export-ops, warmup")
    ap.add_argument("--version", action="version", version=f"minigraph {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)

    d = sub.add_parser("dump", help="print a graph: table, JSON, DOT, SVG/PNG; --profile times it")
    _target_args(d)
    d.add_argument("-f", "--format", default="text", choices=["text", "json", "dot", "svg", "png"])
    d.add_argument("-b", "--backend", default="cpu", choices=["cpu", "cuda", "auto"])
    d.add_argument("--filter", metavar="REGEX", help="keep nodes and leafs whose op or name matches")
    d.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout (svg/png)")
    d.add_argument("--save", metavar="FILE", help="also write the (fused) graph as a graph file")
    d.add_argument("--profile", action="store_true", help=PROFILE_HELP)
    d.add_argument("--top", type=int, metavar="N", help="with --profile: only the N slowest nodes and ops")
    d.add_argument("--repeat", type=int, default=5, help="with --profile: timed runs per node")

    c = sub.add_parser("compare", help="run a graph two ways; report the first diverging node (exit 1)")
    _target_args(c)
    c.add_argument("--backends", default="cpu,reference", metavar="A,B",
                   help="two of cpu, cuda, auto, reference (default cpu,reference)")
    c.add_argument("--fused-vs-unfused", action="store_true",
                   help="the graph as written vs after mg.optimize, on --backend")
    c.add_argument("-b", "--backend", default="cpu", choices=["cpu", "cuda", "auto"])
    c.add_argument("--tol", type=float, default=1e-6, help="NMSE above which a node diverges (default 1e-6)")
    c.add_argument("--json", action="store_true")

    t = sub.add_parser("test-backend-ops", help="ggml's test-backend-ops over minigraph.cases")
    t.add_argument("mode", nargs="?", default="test", choices=["test", "perf", "support"])
    t.add_argument("-o", "--op", help="comma list of ops or full case strings, e.g. 'MUL_MAT(ne_a=[16,9,1,1],...)'")
    t.add_argument("-b", "--backend", help="comma list of backends: cpu, cuda (default: all available)")
    t.add_argument("-p", "--params", help="regex over the case's parameter string")
    t.add_argument("--seed", type=int, help="input seed (default random; printed with each failure)")
    t.add_argument("--against", choices=["ggml"], help="also run the cases on ggml's CPU backend (ggml-python)")
    t.add_argument("--list", action="store_true", help="list the selected cases")
    t.add_argument("--show-coverage", action="store_true", help="ops of the registry without cases")
    t.add_argument("--json", action="store_true", help="machine-readable output")
    t.add_argument("--csv", action="store_true", help="one CSV row per case: time, GFLOP/s, GB/s, FLOPs, bytes")
    t.add_argument("--baseline", metavar="PERF.json",
                   help="perf mode: also print each case's speedup over this earlier `perf --json` output "
                        "(another commit's), and their geometric mean")
    t.add_argument("--markdown", action="store_true", help="support mode: a Markdown table (docs/ops.md)")
    t.add_argument("-j", "--jobs", type=int, default=1, metavar="N",
                   help="test mode: run the cases in N worker processes (default 1: this process)")
    t.add_argument("--test-file", metavar="FILE.json",
                   help="the cases of a file written by `minigraph export-ops` (a model's ops) instead of the built-in ones")

    tr = sub.add_parser("trace", help="run a graph and print every node's value: sum, range, NaN/inf (llama-eval-callback)")
    _target_args(tr)
    tr.add_argument("-b", "--backend", default="cpu", choices=["cpu", "cuda", "auto", "reference"],
                    help="where it runs (reference: the float64 numpy references)")
    tr.add_argument("--filter", metavar="REGEX", help="only nodes whose op or name match")
    tr.add_argument("--stop-at-nan", action="store_true",
                    help="end at the first node whose output holds a NaN or inf (exit status 1); with "
                         "--no-fuse that names the op itself, not the fused kernel holding it")
    tr.add_argument("-v", "--values", action="store_true", help="also the first and last values along each dim")
    tr.add_argument("-n", "--edge", type=int, default=3, metavar="N", help="with -v: values at each end of a dim (default 3)")
    tr.add_argument("--json", action="store_true")

    e = sub.add_parser("export-ops", help="write a graph's ops as conformance cases for test-backend-ops --test-file")
    _target_args(e)
    e.add_argument("-b", "--backend", default="cpu", choices=["cpu", "cuda", "auto"],
                   help="the backend whose fusion decides the ops (default cpu)")
    e.add_argument("-o", "--output", metavar="FILE.json", required=True, help="the minigraph-ops file to write")

    w = sub.add_parser("warmup", help="compile kernels ahead into the disk cache, with a progress bar")
    w.add_argument("-b", "--backend", default="cpu", choices=["cpu", "cuda"],
                   help="cpu (default); cuda kernels are not cached between processes, so it refuses")
    w.add_argument("-o", "--ops", help="comma list of ops (default: every op with conformance cases)")
    w.add_argument("--builds", default="serial,parallel",
                   help="kernel builds to compile: serial, parallel or both (default both)")
    return ap


def _write(data: "str | bytes", path: Optional[str], out: TextIO) -> None:
    if path:
        with open(path, "wb" if isinstance(data, bytes) else "w") as f:
            f.write(data)
    elif isinstance(data, bytes):
        getattr(out, "buffer", sys.stdout.buffer).write(data)
    else:
        out.write(data)


def cmd_dump(args: argparse.Namespace, out: TextIO) -> int:
    from minigraph.tools import dump, graphio, profile

    if str(args.target).lower().endswith(".gguf"):  # a model file: its tensor table and metadata
        from minigraph.tools.gguf_dump import render_gguf

        if args.format not in ("text", "json"):
            raise MinigraphError(f"dump: a GGUF file lists as text or json, not {args.format}")
        _write(render_gguf(args.target, args.format, args.filter), args.output, out)
        return 0
    p = dump.prepare(args.target, graphio.parse_params(args.param), args.backend, not args.no_fuse, gguf=args.gguf)
    if args.save:
        graphio.save_graph(p.graph, args.save)
    if args.format in ("svg", "png"):
        img = dump.render_graphviz(dump.render_dot(p, args.filter), args.format)
        _write(img.decode() if args.format == "svg" else img, args.output, out)  # svg is text
        return 0
    prof = profile.profile_nodes(p, args.repeat, args.seed) if args.profile else None
    if args.format == "json":
        extra = profile.profile_json(*prof, top=args.top, pattern=args.filter) if prof else None
        text = dump.render_json(p, args.filter, extra)
    elif args.format == "dot":
        text = dump.render_dot(p, args.filter)
    else:
        text = dump.render_text(p, args.filter) + ("\n" + profile.render_profile(*prof, top=args.top, pattern=args.filter) if prof else "")
    _write(text, args.output, out)
    return 0


def cmd_compare(args: argparse.Namespace, out: TextIO) -> int:
    import json

    from minigraph.tools import compare, dump, graphio

    ways = [w.strip() for w in args.backends.split(",")]
    if not args.fused_vs_unfused and (len(ways) != 2 or any(w not in ("cpu", "cuda", "auto", "reference") for w in ways)):
        raise MinigraphError(f"--backends {args.backends!r}: expected two of cpu, cuda, auto, reference")
    gf = graphio.load_target(args.target, graphio.parse_params(args.param), args.gguf)
    graphio.fill_random_inputs(gf, args.seed)
    res = compare.compare(gf, ways, dump._labels(gf), args.tol, args.fused_vs_unfused, args.backend)
    out.write(json.dumps(res, indent=1) + "\n" if args.json else compare.render(res))
    return 1 if res["diverged"] else 0


def cmd_test_backend_ops(args: argparse.Namespace, out: TextIO) -> int:
    from minigraph.tools import test_backend_ops

    return test_backend_ops.main(args, out)


def cmd_trace(args: argparse.Namespace, out: TextIO) -> int:
    import minigraph as mg
    from minigraph.tools import dump, graphio, trace

    if args.edge < 1:
        raise MinigraphError(f"-n {args.edge}: expected at least one value at each end")
    source = graphio.load_target(args.target, graphio.parse_params(args.param), args.gguf)
    graphio.fill_random_inputs(source, args.seed)
    kind = "cpu" if args.backend == "reference" else args.backend
    run, _ = dump.optimize(source, mg.backend_sched_new(dump.backends_for(kind)), not args.no_fuse)
    res = trace.trace(run.graph, args.backend, dump._labels(run.graph), args.filter, args.stop_at_nan,
                      args.edge if args.values else 0)
    out.write(trace.render_json(res) if args.json else trace.render(res))
    return 1 if res["first_nonfinite"] is not None else 0


def cmd_export_ops(args: argparse.Namespace, out: TextIO) -> int:
    import minigraph as mg
    from minigraph.tools import dump, graph_ops, graphio

    source = graphio.load_target(args.target, graphio.parse_params(args.param), args.gguf)
    run, _ = dump.optimize(source, mg.backend_sched_new(dump.backends_for(args.backend)), not args.no_fuse)
    doc = graph_ops.export_ops(run.graph, args.target)
    graph_ops.write_ops(doc, args.output)
    ops = sum(e["count"] for e in doc["ops"])
    out.write(f"{len(doc['ops'])} distinct ops of {ops} compute nodes written to {args.output}; run them with\n"
              f"  minigraph test-backend-ops --test-file {args.output}\n")
    for s in doc["skipped"]:
        out.write(f"skipped {s['op']} '{s['name']}': {s['why']}\n")
    return 0


def cmd_warmup(args: argparse.Namespace, out: TextIO) -> int:
    from minigraph.tools import warmup

    if args.backend == "cuda":
        raise MinigraphError("--backend cuda: minigraph's CUDA kernels compile in each process (numba-cuda, no "
                             "disk cache), so compiling them here keeps nothing; call "
                             "minigraph.tools.warmup.warmup('cuda') in the process that computes")
    ops = args.ops.split(",") if args.ops else None
    rep = warmup.warmup("cpu", ops, [b.strip() for b in args.builds.split(",")])
    out.write(f"{rep.kernels} CPU kernel forms ready: {rep.compiled} compiled, {rep.kernels - rep.compiled} "
              f"already cached, {rep.seconds:.1f} s\n")
    return 0


COMMANDS = {"dump": cmd_dump, "compare": cmd_compare, "test-backend-ops": cmd_test_backend_ops,
            "export-ops": cmd_export_ops, "trace": cmd_trace, "warmup": cmd_warmup}


def main(argv: Optional[list[str]] = None, out: Optional[TextIO] = None) -> int:
    """Run the command line `argv` (default sys.argv[1:]); returns the exit status."""
    from minigraph.tools.graphio import TargetError

    out = out or sys.stdout
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2)
        return int(e.code or 0)
    try:
        return COMMANDS[args.command](args, out)
    except TargetError as e:
        print(f"minigraph {args.command}: error in {e}", file=sys.stderr)
        if e.frame:
            print(e.frame, file=sys.stderr)
        return 2
    except MinigraphError as e:
        print(f"minigraph {args.command}: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `minigraph dump ... | head`
        return 0


if __name__ == "__main__":
    sys.exit(main())
