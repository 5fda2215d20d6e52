"""Conformance benchmark: run onnxinv on ONNX models nobody on the project wrote.

Cases are the model folders shipped with the installed onnx wheel
(``onnx/backend/test/data/{pytorch-converted,pytorch-operator,simple}``), its ``light`` models
(inputs built as onnx's backend runner builds them) and onnxruntime's bundled sample models
(``onnxruntime/datasets/*.onnx``). Each case runs in its own process (``--one CASE --json``) so
that a crash, a hang or a memory blow-up is recorded instead of taking the runner down::

    python bench/conformance.py                       # every case, one at a time, 60 s each
    python bench/conformance.py --only Conv2d --only relu
    python bench/conformance.py --group simple,light --jobs 2
    python bench/conformance.py --one simple/test_sign_model   # one case, in this process
    python bench/conformance.py --report /tmp/onnxinv-conformance.jsonl   # re-render a run

For every case: the target is the original model's onnxruntime output on the case's inputs; the
first float input is inverted, every other input is held at its test value (``fixed=``), and each
returned sample is re-checked in a fresh onnxruntime session. Outcomes: ``verified``,
``partial``, ``not-reached``, ``refused`` (a typed onnxinv error), ``refused-target`` (no finite
float output), ``ort-cannot-run``, ``needs-fix`` (``fixed=`` not supported yet),
``harness-error`` (this script could not read the case), and ``crash``: any other exception
(also one that ``invert`` wraps into an "onnxinv failed while ..." ``ModelError``, or a
``MemoryError`` it wraps into ``MemoryBudgetError``), a dead process, or a child killed for
memory or time (it dumps its Python stack first, so the signature names an onnxinv line). The
exit status is 1 when any case crashed or any sample was wrongly verified, so the script can
gate a change. Per-case JSON lines go to ``--out`` (default in the temp folder).

See the "Conformance" section of ``bench/README.md`` for the latest table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.readme_section import replace_section

HERE = Path(__file__).resolve().parent
README = HERE / "README.md"
START, END = "<!-- conformance:start -->", "<!-- conformance:end -->"
JSON_MARK = "CONFORMANCE-JSON: "
GROUPS = ("pytorch-converted", "pytorch-operator", "simple", "light", "ort")
OUTCOMES = (
    "verified",
    "partial",
    "not-reached",
    "refused",
    "refused-target",
    "ort-cannot-run",
    "needs-fix",
    "harness-error",
    "crash",
)
DEFAULT_TOLERANCE = 1e-4
#: Seconds past its timeout after which a case counts as ``late``.
LATE = 5.0
THREAD_VARS = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
)


# ---------------------------------------------------------------------------------------------
# Cases


@dataclass(frozen=True)
class Case:
    """One model to invert.

    Attributes:
        name: ``group/folder`` (``pytorch-converted/test_Conv2d``, ``light/light_resnet50``,
            ``ort/logreg_iris``).
        group: one of :data:`GROUPS`.
        model: path of the .onnx file.
        data: ``test_data_set_0`` folder with ``input_*.pb``, or None when inputs are built.
        inputs: how inputs are built without a data folder: ``"arange"`` (onnx's backend
            runner for ``light`` models) or ``"uniform"`` (seeded [0, 1) floats, integer zeros).
    """

    name: str
    group: str
    model: Path
    data: Path | None = None
    inputs: str = "pb"


def _onnx_data_dir() -> Path:
    import onnx

    return Path(onnx.__file__).resolve().parent / "backend" / "test" / "data"


def _ort_datasets_dir() -> Path:
    import onnxruntime

    return Path(onnxruntime.__file__).resolve().parent / "datasets"


def discover(groups: tuple[str, ...] = GROUPS) -> list[Case]:
    """Every case of ``groups``, in a stable order."""
    cases: list[Case] = []
    data = _onnx_data_dir()
    for group in groups:
        if group in ("pytorch-converted", "pytorch-operator", "simple"):
            for folder in sorted((data / group).iterdir()):
                if (folder / "model.onnx").is_file():
                    sets = folder / "test_data_set_0"
                    cases.append(Case(f"{group}/{folder.name}", group, folder / "model.onnx", sets))
        elif group == "light":
            for model in sorted((data / "light").glob("light_*.onnx")):
                cases.append(Case(f"light/{model.stem}", group, model, None, "arange"))
        elif group == "ort":
            for model in sorted(_ort_datasets_dir().glob("*.onnx")):
                cases.append(Case(f"ort/{model.stem}", group, model, None, "uniform"))
        else:
            raise ValueError(f"unknown group {group!r}; groups are {', '.join(GROUPS)}")
    return cases


def find_case(name: str) -> Case:
    group = name.split("/", 1)[0]
    if group not in GROUPS:
        raise ValueError(f"unknown case {name!r}: it must start with one of {', '.join(GROUPS)}")
    for case in discover((group,)):
        if case.name == name:
            return case
    raise ValueError(f"no case named {name!r}")


def real_inputs(model) -> list:
    """Graph inputs that are not initializers, in graph order."""
    inits = {i.name for i in model.graph.initializer}
    return [vi for vi in model.graph.input if vi.name not in inits]


def _dims(vi) -> list[int]:
    """Static shape of a tensor input, symbolic or unknown dimensions as 1."""
    return [
        int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else 1
        for d in vi.type.tensor_type.shape.dim
    ]


def _read_pb(path: Path, vi):
    """One ``input_*.pb``: a tensor, sequence, map or optional, as the graph input's type says."""
    import onnx
    from onnx import numpy_helper

    raw = path.read_bytes()
    kind = vi.type.WhichOneof("value") if vi is not None else "tensor_type"
    if kind == "sequence_type":
        proto = onnx.SequenceProto()
        proto.ParseFromString(raw)
        return numpy_helper.to_list(proto)
    if kind == "map_type":
        proto = onnx.MapProto()
        proto.ParseFromString(raw)
        return numpy_helper.to_dict(proto)
    if kind == "optional_type":
        proto = onnx.OptionalProto()
        proto.ParseFromString(raw)
        return numpy_helper.to_optional(proto)
    proto = onnx.TensorProto()
    proto.ParseFromString(raw)
    return numpy_helper.to_array(proto)


def load_inputs(case: Case, model) -> dict:
    """The case's input values, keyed by graph input name, in graph order."""
    import onnx

    inputs = real_inputs(model)
    feed: dict = {}
    if case.inputs == "pb":
        for i, vi in enumerate(inputs):
            feed[vi.name] = _read_pb(case.data / f"input_{i}.pb", vi)
        return feed
    rng = np.random.default_rng(0)
    for vi in inputs:
        shape = tuple(_dims(vi))
        dtype = onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
        if case.inputs == "arange":  # onnx/backend/test/runner: generate_dummy_data(random=False)
            n = int(np.prod(shape))
            feed[vi.name] = (np.arange(n).reshape(shape) / n).astype(np.float32)
        elif np.issubdtype(dtype, np.floating):
            feed[vi.name] = rng.random(shape).astype(dtype)
        else:
            feed[vi.name] = np.zeros(shape, dtype)
    return feed


def _first_float_shape(case: Case) -> list[int] | None:
    """Shape of the case's value of the input that would be inverted (for killed children)."""
    import onnx

    model = onnx.load(str(case.model), load_external_data=False)
    feed = load_inputs(case, model)
    vi = next((vi for vi in real_inputs(model) if _is_float(vi)), None)
    return None if vi is None else list(np.shape(feed[vi.name]))


def input_size(case: Case) -> int:
    """Total number of values in the case's inputs (for choosing small cases)."""
    import onnx

    model = onnx.load(str(case.model), load_external_data=False)
    total = 0
    for value in load_inputs(case, model).values():
        if isinstance(value, np.ndarray):
            total += value.size
        elif isinstance(value, list):
            total += sum(np.asarray(v).size for v in value)
        else:
            total += 1
    return total


# ---------------------------------------------------------------------------------------------
# One case, in-process


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return _clean(text.splitlines()[0]) if text else type(exc).__name__


def _clean(text: str) -> str:
    """Long install paths shortened: ``<onnx-data>/simple/...``, ``<site-packages>/...``."""
    text = text.replace(str(_onnx_data_dir()), "<onnx-data>")
    site = Path(np.__file__).resolve().parent.parent
    return text.replace(str(site), "<site-packages>")


def _onnxinv_frames(exc: BaseException) -> tuple[list[str], str | None]:
    """(traceback frames inside the onnxinv package, innermost frame anywhere) as file:line."""
    import onnxinv

    root = Path(onnxinv.__file__).resolve().parent
    inner, ours = None, []
    for frame in traceback.extract_tb(exc.__traceback__):
        path = Path(frame.filename).resolve()
        inner = f"{path.name}:{frame.lineno} ({frame.name})"
        if root in path.parents:
            ours.append(
                f"onnxinv/{path.relative_to(root).as_posix()}:{frame.lineno} ({frame.name})"
            )
    return ours, inner


def _is_float(vi) -> bool:
    from onnx import TensorProto

    return vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type in (
        TensorProto.FLOAT,
        TensorProto.DOUBLE,
        TensorProto.FLOAT16,
    )


def _session(path: Path | bytes, threads: int | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # old-opset warnings are not news here
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    source = path if isinstance(path, bytes) else str(path)
    return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])


#: Opsets tried when onnxruntime has no kernel for an old operator version (the bench's own
#: upgrade, independent of onnxinv's, so the re-check does not trust onnxinv's code).
UPGRADES = (13, 17, 11, 21)


def runnable_model(path: Path, threads: int | None = None) -> tuple[bytes | Path, int | None]:
    """The model onnxruntime runs: the file itself, or its upgrade by ``onnx.version_converter``.

    Returns the model (path, or serialized upgrade) and the opset it was upgraded to (None).

    Raises:
        Exception: onnxruntime's own error when neither runs.
    """
    import onnx

    try:
        _session(path, threads)
        return path, None
    except Exception as exc:
        if "Could not find an implementation" not in str(exc):
            raise
        first = exc
    model = onnx.load(str(path))
    for opset in UPGRADES:
        try:
            upgraded = onnx.version_converter.convert_version(model, opset).SerializeToString()
            _session(upgraded, threads)
            return upgraded, opset
        except Exception:
            continue
    raise first


def _as_array(value):
    """An output as an array: a ZipMap's list of {class: probability} becomes (N, classes)."""
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return np.array([[d[k] for k in sorted(d)] for d in value], dtype=np.float32)
    return value


def _sample_feed(sample: np.ndarray, like: np.ndarray) -> np.ndarray:
    """A returned sample shaped and typed as the case's own value of that input."""
    x = np.asarray(sample).astype(like.dtype)
    if x.size == like.size:
        return x.reshape(like.shape)
    return x.reshape((1, *x.shape))  # onnxinv dropped a symbolic batch dimension


def recheck(
    case: Case,
    result,
    input_name: str,
    output_name: str,
    feed: dict,
    target: np.ndarray,
    model: Path | bytes | None = None,
) -> dict:
    """Run every returned sample through a fresh onnxruntime session on the original model
    (or, for an old opset onnxruntime has no kernels for, the bench's own upgrade of it)."""
    tol = getattr(getattr(result, "target", None), "tolerance", None) or DEFAULT_TOLERANCE
    sess = _session(case.model if model is None else model, threads=_threads())
    verified = np.asarray(result.verified, dtype=bool)
    errors, wrong, problems = [], 0, []
    for i, sample in enumerate(np.asarray(result.inputs)):
        f = dict(feed)
        try:
            f[input_name] = _sample_feed(sample, feed[input_name])
            y = np.asarray(_as_array(sess.run([output_name], f)[0]), dtype=np.float64)
            if y.size != target.size:
                raise ValueError(f"output has {y.size} values, target {target.size}")
            err = float(np.max(np.abs(y.ravel() - target.ravel()), initial=0.0))
            finite = bool(np.isfinite(y).all() and np.isfinite(np.asarray(sample)).all())
        except Exception as exc:  # the sample cannot be re-run: report, do not guess
            problems.append(f"sample {i}: {type(exc).__name__}: {_first_line(exc)}")
            errors.append(None)
            continue
        errors.append(err if math.isfinite(err) else None)
        if verified[i] and (not finite or not err <= tol):
            wrong += 1
    return {
        "tolerance": tol,
        "recheck_errors": errors,
        "wrongly_verified": wrong,
        "recheck_problems": problems,
    }


def _threads() -> int | None:
    value = os.environ.get("OMP_NUM_THREADS")
    return int(value) if value and value.isdigit() else None


def _fixed_supported() -> bool:
    import inspect

    import onnxinv

    try:
        return "fixed" in inspect.signature(onnxinv.invert).parameters
    except (TypeError, ValueError):
        return True  # cannot tell: try it and catch the TypeError


def run_case(
    name: str | Case,
    timeout: float = 60.0,
    samples: int = 4,
    seed: int = 0,
    method: str = "auto",
    max_memory: str = "4G",
) -> dict:
    """Run one case in this process and return its record (never raises for onnxinv errors).

    The record has ``case``, ``outcome`` (one of :data:`OUTCOMES`), ``reason``, ``input`` and
    ``input_shape``, ``output``, ``fixed`` (names), ``samples``, ``verified``, ``best_error``,
    ``wrongly_verified``, ``methods``, ``seconds`` (the ``invert`` call), ``overrun`` (seconds
    past ``timeout``, negative when within it), ``late`` (overrun > :data:`LATE`), and for
    crashes ``exception``, ``frame`` (last traceback frame inside onnxinv) and ``innermost``.
    """
    case = name if isinstance(name, Case) else find_case(name)
    rec: dict = {
        "case": case.name,
        "group": case.group,
        "outcome": None,
        "reason": "",
        "input": None,
        "input_shape": None,
        "output": None,
        "fixed": [],
        "samples": samples,
        "requested": samples,
        "verified": 0,
        "best_error": None,
        "wrongly_verified": 0,
        "methods": {},
        "seconds": None,
        "late": False,
        "timeout": timeout,
    }
    # Inputs and the target: the harness's job; failures here are not onnxinv's.
    try:
        import onnx

        model = onnx.load(str(case.model))
        feed = load_inputs(case, model)
        inputs = real_inputs(model)
    except Exception as exc:
        rec.update(outcome="harness-error", reason=f"{type(exc).__name__}: {_first_line(exc)}")
        return rec
    try:
        runnable, upgraded = runnable_model(case.model, threads=_threads())
        outs = [_as_array(v) for v in _session(runnable, threads=_threads()).run(None, feed)]
    except Exception as exc:
        rec.update(outcome="ort-cannot-run", reason=_first_line(exc))
        return rec
    rec["upgraded_to"] = upgraded

    chosen = next((vi for vi in inputs if _is_float(vi)), None)
    output_name = target = None
    for vi, value in zip(model.graph.output, outs, strict=False):
        if (
            isinstance(value, np.ndarray)
            and np.issubdtype(value.dtype, np.floating)
            and np.isfinite(value).all()
        ):
            output_name, target = vi.name, value
            break
    if chosen is not None:
        rec["input"] = chosen.name
        rec["input_shape"] = list(np.shape(feed[chosen.name]))
        if target is None:
            kinds = ", ".join(
                f"{vi.name}: "
                + (
                    f"{v.dtype}{'' if np.isfinite(v).all() else ' non-finite'}"
                    if isinstance(v, np.ndarray) and np.issubdtype(v.dtype, np.number)
                    else type(v).__name__
                    if not isinstance(v, np.ndarray)
                    else str(v.dtype)
                )
                for vi, v in zip(model.graph.output, outs, strict=False)
            )
            rec.update(outcome="refused-target", reason=f"no finite float output ({kinds})")
            return rec
    rec["output"] = output_name
    fixed = {k: v for k, v in feed.items() if chosen is None or k != chosen.name}
    if chosen is None:
        fixed = {}  # nothing to invert: onnxinv must refuse the model on its own

    import onnxinv
    from onnxinv.errors import OnnxInvError, UnreachableTargetError

    rec["onnxinv"] = str(Path(onnxinv.__file__).resolve().parent)

    kwargs: dict = {
        "samples": samples,
        "seed": seed,
        "method": method,
        "timeout": timeout,
        "max_memory": max_memory,
    }
    rec["max_memory"] = max_memory
    if chosen is not None:
        kwargs["input"] = chosen.name
        shape = list(np.shape(feed[chosen.name]))
        declared = (
            [d.dim_value if d.HasField("dim_value") else None
             for d in chosen.type.tensor_type.shape.dim]
            if chosen.type.tensor_type.HasField("shape")
            else None
        )  # fmt: skip
        # The target is the output for the whole test input: where the declared shape leaves
        # dimensions open (or a symbolic batch holds more than one row), that is the sample.
        if declared is None or None in declared[1:] or (declared and declared[0] is None
                                                         and shape[:1] != [1]):  # fmt: skip
            kwargs["input_shape"] = shape
            rec["input_shape_given"] = shape
    if fixed:
        kwargs["fixed"] = fixed
        rec["fixed"] = list(fixed)
    # With no float input the target hardly matters: onnxinv must refuse the model itself.
    spec = {"values": np.asarray(target if target is not None else [0.0]).tolist()}
    if output_name is not None:
        spec["output"] = output_name
    t0 = time.perf_counter()
    result = None
    try:
        result = onnxinv.invert(str(case.model), spec, **kwargs)
    except UnreachableTargetError as exc:
        rec.update(outcome="not-reached", reason=_first_line(exc))
        if exc.best_error is not None:
            rec["best_error"] = float(exc.best_error)
    except OnnxInvError as exc:
        inner = _wrapped_bug(exc)
        if inner is None:
            rec.update(outcome="refused", reason=f"{type(exc).__name__}: {_first_line(exc)}")
        else:
            _crash(rec, inner)
            rec["wrapped_as"] = f"{type(exc).__name__}: {_first_line(exc)}"
            rec["exception"] = f"{type(inner).__name__} (as {type(exc).__name__})"
    except TypeError as exc:
        if "fixed" in str(exc) and "keyword" in str(exc) and not _fixed_supported():
            rec.update(outcome="needs-fix", reason="onnxinv.invert has no fixed= yet")
        else:
            _crash(rec, exc)
    except BaseException as exc:  # noqa: BLE001 - everything else is a crash, even SystemExit
        if isinstance(exc, KeyboardInterrupt):
            raise
        _crash(rec, exc)
    rec["seconds"] = round(time.perf_counter() - t0, 3)
    rec["overrun"] = round(rec["seconds"] - timeout, 3)
    rec["late"] = rec["overrun"] > LATE
    if result is None:
        return rec

    n = len(result.inputs)
    rec["verified"] = int(np.count_nonzero(result.verified))
    rec["samples"] = n
    errors = np.asarray(result.errors, dtype=np.float64)
    if errors.size and np.isfinite(errors).any():
        rec["best_error"] = float(np.nanmin(errors))
    with contextlib.suppress(Exception):
        rec["methods"] = dict(Counter(result.methods))
    if n and rec["verified"] == n:
        rec["outcome"] = "verified"
    elif rec["verified"]:
        rec["outcome"] = "partial"
        rec["reason"] = "; ".join(getattr(result, "notes", [])[:1])
    else:
        rec["outcome"] = "not-reached"
        rec["reason"] = "invert returned no verified sample without raising"
    if chosen is None:  # onnxinv inverted a model with no float input: say so
        rec["reason"] = f"returned samples for a model with no float input ({rec['reason']})"
        rec["recheck_problems"] = ["no float input to re-check"]
        return rec
    try:
        rec.update(recheck(case, result, chosen.name, output_name, feed, target, model=runnable))
    except Exception as exc:
        rec["recheck_problems"] = [f"{type(exc).__name__}: {_first_line(exc)}"]
    if rec["wrongly_verified"]:
        rec["reason"] = (
            f"{rec['wrongly_verified']} sample(s) flagged verified fail the re-check "
            f"(tolerance {rec.get('tolerance', DEFAULT_TOLERANCE):g})"
        )
    return rec


def _wrapped_bug(exc: BaseException) -> BaseException | None:
    """The unexpected exception inside a typed error raised by ``invert``'s last line of defence.

    ``onnxinv.invert`` turns any exception that is not an ``OnnxInvError`` into a one-line
    ``ModelError`` ("onnxinv failed while ...: ... please report it"), and a ``MemoryError``
    into a ``MemoryBudgetError``. For users that is a clean message; for this benchmark it is
    still a crash, reported with the original exception's traceback.
    """
    from onnxinv.errors import OnnxInvError

    frames = traceback.extract_tb(exc.__traceback__)
    raised_in_invert = bool(frames) and frames[-1].name == "invert"
    cause = exc.__cause__ if exc.__cause__ is not None else exc.__context__
    if cause is None or isinstance(cause, OnnxInvError):
        return None
    if isinstance(cause, MemoryError) or raised_in_invert or "onnxinv failed" in str(exc):
        return cause
    return None


def _crash(rec: dict, exc: BaseException) -> None:
    ours, inner = _onnxinv_frames(exc)
    frame = ours[-1] if ours else None
    rec.update(
        outcome="crash",
        exception=type(exc).__name__,
        frame=frame,
        callers=ours[-4:-1][::-1],  # the frames above it, nearest first
        innermost=inner,
        reason=f"{type(exc).__name__}: {_first_line(exc)}" + (f" @ {frame}" if frame else ""),
        traceback="".join(traceback.format_exception(exc))[-4000:],
    )


def _peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def child_main(args) -> int:
    import faulthandler

    # A segfault, or the runner's SIGUSR1 before it kills a child, prints the Python stack.
    faulthandler.enable()
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    rec = run_case(
        args.one,
        timeout=args.timeout,
        samples=args.samples,
        seed=args.seed,
        max_memory=args.max_memory,
    )
    rec["peak_mb"] = _peak_rss_mb()
    if args.json:
        sys.stdout.write("\n" + JSON_MARK + json.dumps(rec, default=str) + "\n")
    else:
        print(json.dumps({k: v for k, v in rec.items() if k != "traceback"}, indent=2))
        if rec.get("traceback"):
            print(rec["traceback"], file=sys.stderr)
    sys.stdout.flush()
    return 0


# ---------------------------------------------------------------------------------------------
# The runner: one child process per case


def _proc_status(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM of ``pid`` in MB (empty once the process is gone)."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key, value = line.split(":", 1)
                    out[key] = int(value.split()[0]) / 1024
    except OSError:
        pass
    return out


@dataclass
class Running:
    case: Case
    proc: subprocess.Popen
    out: object
    err: object
    start: float
    peak: float = 0.0
    killed: str | None = None


def _spawn(case: Case, args, env: dict) -> Running:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--one",
        case.name,
        "--json",
        "--timeout",
        str(args.timeout),
        "--max-memory",
        str(args.max_memory),
        "--samples",
        str(args.samples),
        "--seed",
        str(args.seed),
    ]
    out = tempfile.TemporaryFile("w+")  # noqa: SIM115 - closed in _finish
    err = tempfile.TemporaryFile("w+")  # noqa: SIM115 - closed in _finish
    proc = subprocess.Popen(
        cmd, stdout=out, stderr=err, env=env, start_new_session=True, cwd=HERE.parent
    )
    return Running(case, proc, out, err, time.monotonic())


def _kill(run: Running, why: str, dump: float = 0.0) -> None:
    """Kill the child's session; ``dump`` > 0 first asks it for its Python stack (SIGUSR1)."""
    run.killed = why
    if dump > 0:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(run.proc.pid, signal.SIGUSR1)
        time.sleep(dump)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(run.proc.pid, signal.SIGKILL)  # the child's own session: it and its children


_FAULT_FRAME = re.compile(r'File "([^"]+)", line (\d+) in (\S+)')


def _dumped_frame(stderr: str) -> str | None:
    """The innermost onnxinv frame of a faulthandler dump (most recent call first)."""
    for m in _FAULT_FRAME.finditer(stderr):
        parts = Path(m.group(1)).parts
        if "onnxinv" in parts[:-1]:
            start = len(parts) - 1 - parts[::-1].index("onnxinv")
            return f"{'/'.join(parts[start:])}:{m.group(2)} ({m.group(3)})"
    return None


def _finish(run: Running, args) -> dict:
    wall = time.monotonic() - run.start
    rc = run.proc.returncode
    run.out.seek(0)
    run.err.seek(0)
    stdout, stderr = run.out.read(), run.err.read()
    run.out.close()
    run.err.close()
    rec = None
    for line in stdout.splitlines():
        if line.startswith(JSON_MARK):
            with contextlib.suppress(json.JSONDecodeError):
                rec = json.loads(line[len(JSON_MARK) :])
    tail = [ln for ln in stderr.strip().splitlines() if ln.strip()][-3:]
    if rec is None or run.killed:
        rec = {
            "case": run.case.name,
            "group": run.case.group,
            "outcome": "crash",
            "samples": args.samples,
            "verified": 0,
            "wrongly_verified": 0,
            "timeout": args.timeout,
        }
        if run.killed:
            rec["exception"] = run.killed
            rec["reason"] = f"{run.killed} (after {wall:.0f} s, peak {run.peak:.0f} MB)"
        else:
            sig = ""
            if rc is not None and rc < 0:
                with contextlib.suppress(ValueError):
                    sig = f" ({signal.Signals(-rc).name})"
            rec["exception"] = f"exit {rc}{sig}"
            rec["reason"] = f"exit {rc}{sig} without a result" + (
                f": {tail[-1][:200]}" if tail else ""
            )
        rec["stderr_tail"] = tail
        rec["frame"] = _dumped_frame(stderr)
        if rec["frame"]:
            rec["reason"] += f" @ {rec['frame']}"
        with contextlib.suppress(Exception):
            rec["input_shape"] = _first_float_shape(run.case)
        rec["late"] = bool(run.killed and "time" in run.killed)
        if run.killed and "time" in run.killed:
            rec["overrun"] = round(wall - args.timeout, 2)  # at least: it never finished
    rec["wall"] = round(wall, 2)
    rec["peak_mb"] = round(max(float(rec.get("peak_mb") or 0.0), run.peak), 1)
    rec["exit"] = rc
    return rec


def run_all(cases: list[Case], args) -> list[dict]:
    env = dict(os.environ)
    for var in THREAD_VARS:
        env[var] = str(args.threads)
    env["PYTHONUNBUFFERED"] = "1"
    pending = list(cases)
    running: list[Running] = []
    results: dict[str, dict] = {}
    out = open(args.out, "w")  # noqa: SIM115 - kept open across the loop, closed below
    try:
        while pending or running:
            while pending and len(running) < args.jobs:
                running.append(_spawn(pending.pop(0), args, env))
            time.sleep(0.2)
            for run in list(running):
                status = _proc_status(run.proc.pid)
                run.peak = max(run.peak, status.get("VmHWM", 0.0), status.get("VmRSS", 0.0))
                if run.proc.poll() is None:
                    if status.get("VmRSS", 0.0) > args.max_rss:
                        _kill(run, f"killed for memory: RSS above {args.max_rss:g} MB", 0.3)
                    elif time.monotonic() - run.start > args.timeout + 30:
                        _kill(run, f"killed over time: more than {args.timeout + 30:g} s", 1.0)
                    else:
                        continue
                    run.proc.wait()
                rec = _finish(run, args)
                running.remove(run)
                results[run.case.name] = rec
                out.write(json.dumps(rec, default=str) + "\n")
                out.flush()
                done = len(results)
                print(
                    f"[{done}/{len(cases)}] {rec['case']}: {rec['outcome']}"
                    f" {rec.get('verified', 0)}/{rec.get('samples', args.samples)}"
                    f" {rec.get('seconds') or rec.get('wall', 0):.1f}/{args.timeout:g} s"
                    + (f"  {_short(rec.get('reason', ''), 100)}" if rec.get("reason") else ""),
                    file=sys.stderr,
                    flush=True,
                )
    except KeyboardInterrupt:
        for run in running:
            _kill(run, "interrupted")
            run.proc.wait()
        raise
    finally:
        out.close()
    return [results[c.name] for c in cases if c.name in results]


# ---------------------------------------------------------------------------------------------
# Report


def _short(text: str, n: int = 80) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|")


_MASKS = [
    (re.compile(r"'[^']*'"), "'…'"),
    (re.compile(r'"[^"]*"'), '"…"'),
    (re.compile(r"\[[^\]]*\]"), "[…]"),
    (re.compile(r"\([^()]*\)"), "(…)"),
    (re.compile(r"\b\d+(\.\d+)?(e[-+]?\d+)?\b"), "N"),
]


def pattern(message: str) -> str:
    """A refusal message with names, shapes and numbers masked, for grouping."""
    text = message
    for rx, rep in _MASKS:
        text = rx.sub(rep, text)
    return text


def signature(rec: dict) -> str:
    """What identifies a crash's cause: exception type and last onnxinv frame."""
    exc = rec.get("exception") or "crash"
    if rec.get("frame"):
        return f"{exc} @ {rec['frame']}"
    if rec.get("innermost"):
        return f"{exc} @ {rec['innermost']} (no onnxinv frame)"
    return exc


def summary(results: list[dict]) -> dict:
    counts = Counter(r["outcome"] for r in results)
    return {
        "cases": len(results),
        "counts": {o: counts.get(o, 0) for o in OUTCOMES},
        "verified_samples": sum(int(r.get("verified") or 0) for r in results),
        "samples": sum(int(r.get("samples") or 0) for r in results),
        "requested": sum(int(r.get("requested") or r.get("samples") or 0) for r in results),
        "wrongly_verified": sum(int(r.get("wrongly_verified") or 0) for r in results),
        "late": sum(bool(r.get("late")) for r in results),
        "worst_overrun": worst_overrun(results),
        "max_peak_mb": max((float(r.get("peak_mb") or 0) for r in results), default=0.0),
        "recheck_problems": sum(bool(r.get("recheck_problems")) for r in results),
    }


def overrun(rec: dict) -> float | None:
    """Seconds ``rec``'s run went past its timeout (negative: within it; None: not timed)."""
    if rec.get("overrun") is not None:
        return float(rec["overrun"])
    secs = rec.get("seconds")
    if secs is None or rec.get("timeout") is None:
        return None
    return float(secs) - float(rec["timeout"])


def worst_overrun(results: list[dict]) -> tuple[float, str] | None:
    """The largest :func:`overrun` and its case (None when no case was timed)."""
    timed = [(o, r["case"]) for r in results if (o := overrun(r)) is not None]
    return max(timed) if timed else None


def _overrun_text(worst: tuple[float, str] | None) -> str:
    if worst is None:
        return "no case timed"
    return f"worst overrun {worst[0]:+.1f} s ({worst[1]})"


def final_line(results: list[dict]) -> str:
    s = summary(results)
    c = s["counts"]
    parts = [f"{c[o]} {o}" for o in OUTCOMES if o not in ("crash",) and c[o]]
    return (
        f"{s['cases']} cases: "
        + ", ".join(parts or ["0 verified"])
        + f", {c['crash']} crashes, {s['wrongly_verified']} wrongly verified"
        + f" ({s['verified_samples']}/{s['samples']} samples verified, {s['late']} late, "
        + _overrun_text(s["worst_overrun"])
        + ")"
    )


def _fmt_err(value) -> str:
    return "" if value is None else f"{float(value):.2g}"


def _verified_cell(rec: dict, requested: int) -> str:
    """``verified/returned``, and how many were asked for when onnxinv returned fewer."""
    n = rec.get("samples", requested)
    asked = rec.get("requested", requested)
    return f"{rec.get('verified', 0)}/{n}" + (f" of {asked}" if n != asked else "")


def _methods(rec: dict) -> str:
    m = rec.get("methods") or {}
    return ", ".join(f"{k}×{v}" if v > 1 else k for k, v in m.items())


def markdown(results: list[dict], args) -> str:
    s = summary(results)
    lines = [
        "## Conformance: models nobody on the project wrote",
        "",
        "`python bench/conformance.py "
        f"--jobs {args.jobs} --timeout {args.timeout:g}` ({s['cases']} cases, "
        f"{args.samples} samples each, seed {args.seed}, {args.threads} thread(s) per child, "
        f"onnx {_version('onnx')}, onnxruntime {_version('onnxruntime')}; "
        f"{time.strftime('%Y-%m-%d')}). Each case runs in its own process: target = the "
        "original model's onnxruntime output on the case's inputs, the first float input is "
        "inverted, the others are held at their test values, and every returned sample is "
        "re-checked in a fresh onnxruntime session. A `crash` is an exception other than a "
        "typed onnxinv refusal (an internal error that `invert` wraps as an `onnxinv failed "
        "while ...` `ModelError`, or a `MemoryError` it wraps as `MemoryBudgetError`, counts "
        "as one), a dead child, or a child killed for memory "
        f"(> {args.max_rss:g} MB) or time (> timeout + 30 s); `late` means `invert` overran "
        "its timeout by more than 5 s. Gate: 0 crashes, 0 wrongly verified.",
        "",
        "| outcome | cases |",
        "|---|---:|",
    ]
    lines += [f"| {o} | {n} |" for o, n in s["counts"].items() if n or o == "crash"]
    lines += [
        f"| **total** | **{s['cases']}** |",
        "",
        f"- verified samples: {s['verified_samples']} of {s['samples']} returned "
        f"({s['requested']} requested; onnxinv drops repeated samples of bijective models)",
        f"- wrongly verified samples (flagged verified, fail the re-check): "
        f"**{s['wrongly_verified']}**",
        f"- late (invert took more than timeout + {LATE:g} s): {s['late']}; "
        + _overrun_text(s["worst_overrun"]),
        f"- max peak RSS: {s['max_peak_mb']:.0f} MB",
    ]
    if s["recheck_problems"]:
        lines.append(f"- cases whose samples could not be re-run: {s['recheck_problems']}")
    crashes = defaultdict(list)
    for r in results:
        if r["outcome"] == "crash":
            crashes[signature(r)].append(r)
    if crashes:
        lines += ["", "### Crashes by signature", ""]
        for sig, recs in sorted(crashes.items(), key=lambda kv: (-len(kv[1]), kv[0])):
            eg = "e.g. " if len({r.get("reason") for r in recs}) > 1 else ""
            lines.append(
                f"- **{_cell(sig)}** ({len(recs)}): {eg}{_cell(_short(recs[0]['reason'], 200))}"
            )
            callers = recs[0].get("callers")
            if callers:
                lines.append("  - called from " + " ← ".join(f"`{c}`" for c in callers))
            lines.append("  - " + ", ".join(f"`{r['case']}`" for r in recs))
    for outcome, title in (
        ("refused", "Refusals by message"),
        ("refused-target", "No usable target"),
        ("not-reached", "Not reached"),
        ("ort-cannot-run", "onnxruntime cannot run the original"),
        ("needs-fix", "Waiting for `fixed=`"),
        ("harness-error", "Harness errors"),
    ):
        groups = defaultdict(list)
        for r in results:
            if r["outcome"] == outcome:
                groups[pattern(r.get("reason") or "")].append(r)
        if not groups:
            continue
        lines += ["", f"### {title}", ""]
        for _, recs in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
            eg = "e.g. " if len({r.get("reason") for r in recs}) > 1 else ""
            lines.append(
                f"- ({len(recs)}) {eg}{_cell(_short(recs[0].get('reason') or '', 200))} — "
                + ", ".join(f"`{r['case']}`" for r in recs)
            )
    lines += [
        "",
        "### Per case",
        "",
        "| case | input shape | outcome | verified | best error | s | over | peak MB | late "
        "| method | reason |",
        "|---|---|---|---:|---:|---:|---:|---:|---|---|---|",
    ]
    for r in results:
        shape = "×".join(map(str, r["input_shape"])) if r.get("input_shape") else ""
        secs = r.get("seconds") if r.get("seconds") is not None else r.get("wall")
        over = overrun(r)
        lines.append(
            f"| {r['case']} | {shape} | {r['outcome']} | "
            f"{_verified_cell(r, args.samples)} | "
            f"{_fmt_err(r.get('best_error'))} | {'' if secs is None else f'{secs:.1f}'} | "
            f"{'' if over is None else f'{over:+.1f}'} | "
            f"{float(r.get('peak_mb') or 0):.0f} | {'late' if r.get('late') else ''} | "
            f"{_cell(_methods(r))} | {_cell(_short(r.get('reason') or '', 80))} |"
        )
    lines += ["", final_line(results)]
    return "\n".join(lines) + "\n"


def _version(module: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(module)
    except PackageNotFoundError:
        return "?"


def write_readme(text: str, path: Path = README) -> None:
    """Replace the conformance section between its markers in ``path``."""
    replace_section(path, START, END, text)


# ---------------------------------------------------------------------------------------------
# Command line


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="SUBSTR",
        help="run the cases whose name contains SUBSTR (repeatable)",
    )
    p.add_argument(
        "--group",
        default=",".join(GROUPS),
        help=f"comma-separated groups (default {','.join(GROUPS)})",
    )
    p.add_argument("--timeout", type=float, default=60.0, help="onnxinv timeout per case (s)")
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=1, help="cases run at once")
    p.add_argument("--threads", type=int, default=1, help="OMP/MKL/BLAS threads per child")
    p.add_argument("--max-rss", type=float, default=8000.0, help="kill a child above this (MB)")
    p.add_argument(
        "--max-memory",
        default="4G",
        help="onnxinv's memory budget per case (its solvers' working memory; the process's "
        "libraries and the model come on top)",
    )
    p.add_argument(
        "--out",
        default=str(Path(tempfile.gettempdir()) / "onnxinv-conformance.jsonl"),
        help="per-case JSON lines",
    )
    p.add_argument(
        "--readme",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="rewrite bench/README.md's conformance section (default: only when "
        "every case ran, i.e. no --only/--group)",
    )
    p.add_argument("--list", action="store_true", help="list the selected cases and exit")
    p.add_argument(
        "--report",
        metavar="JSONL",
        help="do not run: render the table from a previous run's JSON lines",
    )
    p.add_argument("--one", metavar="CASE", help="run one case in this process")
    p.add_argument("--json", action="store_true", help="with --one: one JSON line on stdout")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.one:
        return child_main(args)
    groups = tuple(g.strip() for g in args.group.split(",") if g.strip())
    cases = discover(groups)
    if args.only:
        cases = [c for c in cases if any(s in c.name for s in args.only)]
    if args.list:
        print("\n".join(c.name for c in cases))
        return 0
    if not cases:
        print("no case selected", file=sys.stderr)
        return 2
    if args.report:
        with open(args.report) as f:
            records = {r["case"]: r for r in map(json.loads, filter(str.strip, f))}
        results = [records[c.name] for c in cases if c.name in records]
    else:
        results = run_all(cases, args)
    text = markdown(results, args)
    print(text, end="")
    full = not args.only and set(groups) == set(GROUPS)
    if args.readme or (args.readme is None and full):
        write_readme(text)
    if not args.report:
        print(f"per-case JSON lines: {args.out}", file=sys.stderr)
    s = summary(results)  # the Markdown's last line is final_line(results)
    return 1 if s["counts"]["crash"] or s["wrongly_verified"] else 0


if __name__ == "__main__":
    sys.exit(main())
