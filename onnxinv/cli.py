"""Command line: ``onnxinv run``, ``onnxinv sweep``, ``onnxinv inspect``.

Exit status: 0 every sample verified; 3 some did not (all are written, flagged); 1 bad input or
unreachable target (one line on stderr, nothing written); 130 interrupted.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import traceback
from collections import Counter
from pathlib import Path

import click

EXIT_OK, EXIT_ERROR, EXIT_UNVERIFIED, EXIT_INTERRUPTED = 0, 1, 3, 130


def _fail(message: str, code: int = EXIT_ERROR) -> None:
    click.echo(f"onnxinv: error: {message}", err=True)
    sys.exit(code)


def _guard(fn):
    """Turn every error into one line on stderr and an exit status; never a traceback."""

    def wrapper(*args, **kwargs):
        try:
            from .errors import OnnxInvError, RuntimeMissingError
        except ImportError as exc:  # pragma: no cover
            _fail(str(exc))
        try:
            return fn(*args, **kwargs)
        except BrokenPipeError:  # output piped into head & co.
            sys.stderr.close()
            sys.exit(EXIT_OK)
        except KeyboardInterrupt:
            _fail("interrupted; nothing was written", EXIT_INTERRUPTED)
        except (OnnxInvError, RuntimeMissingError) as exc:
            if os.environ.get("ONNXINV_DEBUG"):
                traceback.print_exc()
            _fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        except MemoryError:
            if os.environ.get("ONNXINV_DEBUG"):
                raise
            _fail("out of memory: lower --max-memory, --chunk-size or --samples")
        except Exception as exc:  # noqa: BLE001 - the last line of defence
            if os.environ.get("ONNXINV_DEBUG"):
                raise
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            _fail(
                f"internal error ({type(exc).__name__}: {text}); run with --debug for a "
                "traceback and please report it"
            )

    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper


class _OneLineGroup(click.Group):
    """Usage errors (unknown option, bad value) are one line and exit 1, like every error."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as exc:
            _fail(exc.format_message().strip().splitlines()[0])
        except click.ClickException as exc:
            _fail(exc.format_message().strip().splitlines()[0])
        except click.Abort:
            _fail("interrupted; nothing was written", EXIT_INTERRUPTED)
        sys.exit(rv if isinstance(rv, int) else EXIT_OK)


def _debug(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        os.environ["ONNXINV_DEBUG"] = "1"


_DEBUG = click.option(
    "--debug",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_debug,
    help="Show the traceback behind an error (also ONNXINV_DEBUG=1).",
)


_QUIET = click.option("--quiet", "-q", is_flag=True, help="No progress bar and no summary.")


@click.group(cls=_OneLineGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="onnxinv")
@_DEBUG
def main() -> None:
    """Invert ONNX models: find many inputs that produce a target output, verified in onnxruntime."""


def _fixed_values(pairs: tuple[str, ...]) -> dict:
    """``--fix NAME=FILE`` pairs as {name: array}; FILE is .npy or a serialized TensorProto."""
    import numpy as np

    from .errors import OptionError

    fixed = {}
    for pair in pairs:
        name, sep, file = pair.partition("=")
        if not sep or not name or not file:
            raise OptionError(f"--fix needs NAME=FILE (.npy or .pb), not {pair!r}")
        path = Path(file)
        if not path.is_file():
            raise OptionError(f"--fix {name}: file not found: {path}")
        try:
            if path.suffix == ".pb":
                import onnx

                tensor = onnx.TensorProto()
                tensor.ParseFromString(path.read_bytes())
                fixed[name] = onnx.numpy_helper.to_array(tensor)
            else:
                fixed[name] = np.load(path, allow_pickle=False)
        except Exception as exc:
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise OptionError(f"--fix {name}: cannot read {path} ({text})") from None
    return fixed


class _MethodName(click.ParamType):
    """``--method``: any registered solver, checked when the option is read (plugins too)."""

    name = "method"

    def get_metavar(self, *args, **kwargs) -> str:
        from .solvers.registry import default_solvers

        return "[" + "|".join(default_solvers().names()) + "]"

    def convert(self, value, param, ctx):
        from .solvers.registry import default_solvers

        names = default_solvers().names()
        if value not in names:
            self.fail(f"{value!r} is not one of {', '.join(names)}", param, ctx)
        return value


_CLI_TYPES = {
    "method": _MethodName(),
    "device": click.Choice(["cpu", "cuda"]),
    "jacobian": click.Choice(["auto", "dense", "matrix-free"]),  # settings.JACOBIAN_MODES
    "starts": click.Choice(["auto", "uniform", "smooth"]),  # settings.START_FAMILIES
}


def settings_options(names: tuple[str, ...] | None = None):
    """click options generated from :class:`~onnxinv.settings.Settings` (``names`` only)."""
    from .settings import Settings

    fields = [
        f for f in dataclasses.fields(Settings)
        if f.metadata["cli"] and (names is None or f.name in names)
    ]  # fmt: skip

    def decorate(fn):
        for f in reversed(fields):
            meta = f.metadata
            decls = [meta["flag"] or "--" + f.name.replace("_", "-")]
            decls += [meta["short"]] if meta["short"] else []
            decls += ["--" + a.replace("_", "-") for a in meta["aliases"]]
            kind = meta["cli_type"]
            kind = _CLI_TYPES.get(kind, kind) if isinstance(kind, str) else kind
            kwargs = {"help": meta["help"], "multiple": meta["multiple"]}
            if meta["metavar"]:
                kwargs["metavar"] = meta["metavar"]
            if not meta["multiple"]:
                kwargs["type"] = kind if kind is not None else type(f.default)
                kwargs["default"] = f.default
                kwargs["show_default"] = f.default is not None
            fn = click.option(*decls, f.name, **kwargs)(fn)
        return fn

    return decorate


def _settings(options: dict):
    """The CLI's option values as :class:`~onnxinv.settings.Settings` (files read here)."""
    from .settings import Settings

    if "fixed" in options:
        options["fixed"] = _fixed_values(options["fixed"]) or None
    return Settings.create(**options)


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option(
    "--target",
    "-t",
    "target_path",
    required=True,
    type=click.Path(path_type=Path),
    help="Target JSON file (distribution, class+confidence, or values).",
)
@click.option(
    "--out",
    "-o",
    type=click.Path(path_type=Path),
    help="Output folder [default: runs/<model name>].",
)
@click.option("--overwrite", is_flag=True, help="Replace a non-empty output folder.")
@settings_options()
@_QUIET
@_DEBUG
@_guard
def run(model, target_path, out, overwrite, quiet, **options) -> None:
    """Find inputs of MODEL that produce the target and write them to a folder."""
    from . import api
    from .target import Target
    from .write.folder import check_destination

    target = Target.from_file(target_path)
    settings = _settings(options)
    dest = out if out is not None else Path("runs") / Path(model).stem
    check_destination(dest, overwrite)
    bar = None
    if not quiet and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(
            total=settings.samples, desc="inverting", unit="sample", file=sys.stderr, leave=False
        )
    try:
        result = api.invert(
            model, target, settings, on_progress=bar.update if bar is not None else None
        )
    finally:
        if bar is not None:
            bar.close()
    path = result.save(dest, overwrite=overwrite)
    if not quiet:
        for note in result.notes:
            click.echo(f"note: {note}", err=True)
        t = result.timings
        click.echo(
            f"{result.n_verified}/{len(result)} samples verified "
            f"(max error {float(result.errors.max()):.2g}, tolerance {target.tolerance:g}) "
            f"in {t['total']:.2f} s -> {path}"
        )
    sys.exit(EXIT_OK if result.all_verified else EXIT_UNVERIFIED)


@main.command()
@click.argument("models", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--classes",
    default="all",
    show_default=True,
    help="'all' (every class of each model's output) or class indices such as 0,3,7.",
)
@click.option(
    "--confidence",
    type=float,
    default=0.9,
    show_default=True,
    help="Each target's class probability; the other classes share the rest evenly.",
)
@click.option("--tolerance", type=float, default=1e-4, show_default=True,
              help="Largest output difference a verified sample may have.")  # fmt: skip
@click.option(
    "--out",
    "-o",
    type=click.Path(path_type=Path),
    default=Path("runs/sweep"),
    show_default=True,
    help="The sweep's folder; pairs already written there are skipped.",
)
@click.option(
    "--workers",
    "-j",
    type=int,
    help="Processes on this machine [default: one per core; 1: in this process]; with --ray, "
    "the most tasks in flight.",
)
@click.option(
    "--ray",
    "ray_address",
    metavar="ADDRESS|auto",
    help="Run the pairs on an existing Ray cluster (needs the 'ray' extra).",
)
@click.option("--overwrite", is_flag=True, help="Redo every pair, replacing earlier shards.")
@settings_options()
@_QUIET
@_DEBUG
@_guard
def sweep(
    models, classes, confidence, tolerance, out, workers, ray_address, overwrite, quiet, **options
) -> None:
    """Invert every MODEL for every class at --confidence; write shards, a summary and a figure.

    Exit status: 0 every sample of every pair verified; 3 some did not (unreachable targets
    included; every pair has its shard); 1 bad input, or a pair failed twice (the others are
    kept: rerun to retry it); 130 interrupted (finished pairs are kept).
    """
    from .sweeps.run import sweep as run_sweep

    settings = _settings(options)
    try:
        summary = run_sweep(
            [str(m) for m in models], classes=classes, confidence=confidence, out=out,
            workers=workers, ray=ray_address, tolerance=tolerance, overwrite=overwrite,
            progress=not quiet and sys.stderr.isatty(), settings=settings,
        )  # fmt: skip
    except KeyboardInterrupt:
        _fail(f"interrupted; finished pairs are kept in {out}: rerun to resume", EXIT_INTERRUPTED)
    if not quiet:
        click.echo(summary.markdown(), nl=False)
        click.echo(summary.line())
    if summary.failed:
        first = summary.failed[0]
        _fail(
            f"{len(summary.failed)} of {len(summary)} pairs failed ({first.model} class "
            f"{first.cls}: {first.reason}); the others are in {out}: rerun to retry"
        )
    sys.exit(EXIT_OK if summary.all_verified else EXIT_UNVERIFIED)


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@settings_options(("input", "output", "fixed", "input_shape", "disable_plugins"))
@_DEBUG
@_guard
def inspect(model, **options) -> None:
    """Show MODEL's inputs, outputs, opsets and operators, and what onnxinv would invert."""
    from .load import model as model_mod

    settings = _settings(options)
    proto, name, notes = model_mod.read_model(model)
    inits = {i.name for i in proto.graph.initializer}
    click.echo(f"model: {name}  (ir {proto.ir_version}, producer {proto.producer_name or '?'})")
    click.echo(
        "opsets: " + ", ".join(f"{o.domain or 'ai.onnx'} {o.version}" for o in proto.opset_import)
    )
    click.echo("inputs:")
    for vi in proto.graph.input:
        if vi.name not in inits:
            click.echo(f"  {vi.name}: {_type_str(vi)}")
    click.echo("outputs:")
    for vi in proto.graph.output:
        click.echo(f"  {vi.name}: {_type_str(vi)}")
    ops = Counter(f"{n.domain + '.' if n.domain else ''}{n.op_type}" for n in proto.graph.node)
    click.echo("operators: " + ", ".join(f"{k} x{v}" if v > 1 else k for k, v in ops.items()))
    for note in notes:
        click.echo(f"note: {note}")
    try:
        loaded = model_mod.load(
            proto,
            input=settings.input,
            output=settings.output,
            fixed=settings.fixed,
            input_shape=settings.input_shape,
        )
    except Exception as exc:  # report, do not fail: inspect is for diagnosing
        click.echo(f"default choice: none ({str(exc).splitlines()[0]})")
        return
    for note in loaded.notes:
        if note not in notes:
            click.echo(f"note: {note}")
    click.echo(
        f"default choice: invert {loaded.input_name!r} (sample shape {list(loaded.input_shape)}) "
        f"to match {loaded.output_name!r} (shape {list(loaded.output_shape)})"
    )
    if loaded.tail == "Sigmoid":
        click.echo(f"tail: Sigmoid; values targets in (0, 1) are solved on {loaded.logits_name!r}")
    elif loaded.tail:
        click.echo(
            f"tail: {loaded.tail} over the last axis; distribution targets are solved on "
            f"logits {loaded.logits_name!r}"
        )
    click.echo(f"batched runs: {'yes' if loaded.batched else 'no (one sample per run)'}")
    from .partition.blocks import describe, partition
    from .rules import default_registry

    part = partition(loaded, default_registry(settings.disable_plugins))
    click.echo("blocks (input → output; method auto runs backward, then LM where needed):")
    for line in describe(part):
        click.echo(line)
    line = _chain_line(part)
    if line:
        click.echo(line)


def _chain_line(part) -> str | None:
    """What the chain pass and the exact solver make of the first block, in one line."""
    from .partition.chain import Activation, Affine, Select, chain_of
    from .solvers.exact.analysis import first_smooth

    if not part.blocks or part.blocks[0].kind != "invertible":
        return None
    found = chain_of(part.blocks[0])
    if found is None:
        return None
    ops, _ = found
    acts = [op.rule.op_type for op in ops if isinstance(op, Activation | Select)]
    text = (
        f"chain: block 0 is one chain ({sum(isinstance(o, Affine) for o in ops)} composed "
        f"affine maps, {', '.join(acts) or 'no activations'}): the backward pass chooses every "
        "free coefficient jointly (Newton over the input), not block by block as above"
    )
    if acts and first_smooth(ops) is None and len(part.blocks) == 1:
        text += "; piecewise linear: with --bounds, --method exact decides and samples it exactly"
    return text


@main.command()
@settings_options(("disable_plugins",))
@_guard
def rules(disable_plugins) -> None:
    """List every inverse rule: operator, versions, kind and the plugin it came from."""
    from .rules import default_registry

    reg = default_registry(disable_plugins)
    grouped: dict[tuple[str, str, str], list] = {}
    for e in reg.entries():
        grouped.setdefault((e.domain, e.op_type, e.source), []).append(e)
    click.echo(f"{'operator':<28} {'versions':<22} {'kind':<7} {'exact':<5} source")
    for (domain, op, source), entries in grouped.items():
        rule = entries[-1].rule
        name = f"{domain + '.' if domain else ''}{op}"
        versions = ",".join(str(e.version) for e in entries)
        exact = "yes" if rule.lossless else "no"
        click.echo(f"{name:<28} {versions:<22} {rule.kind:<7} {exact:<5} {source}")
        click.echo(f"    {rule.describe()}")
    click.echo("plugins: " + ", ".join(f"{k} ({v})" for k, v in reg.plugins.items()))


@main.command()
@settings_options(("disable_plugins",))
@_guard
def methods(disable_plugins) -> None:
    """List the solvers --method accepts, with a one-line description and their source."""
    from .solvers.registry import default_solvers

    reg = default_solvers(disable_plugins)
    width = max(len(n) for n in reg.names())
    for e in reg.entries():
        click.echo(f"{e.name:<{width}}  {e.solver.summary}  [{e.source}]")


def _type_str(vi) -> str:
    t = vi.type
    if t.HasField("tensor_type"):
        from onnx import TensorProto

        dims = []
        for d in t.tensor_type.shape.dim:
            dims.append(str(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?"))
        return f"{TensorProto.DataType.Name(t.tensor_type.elem_type).lower()}[{', '.join(dims)}]"
    return t.WhichOneof("value") or "unknown"


if __name__ == "__main__":  # pragma: no cover
    main()
