"""Load an ONNX model, choose the input to invert and the output to match, prune, and batch it.

Everything downstream works on a :class:`LoadedModel`: the original model (for verification),
a pruned copy that computes only the chosen output from the chosen input, and, where the graph
ends in Softmax/LogSoftmax, the name of the logits tensor the solvers match instead.

:func:`load` puts together the steps of the other modules of :mod:`onnxinv.load`: reading
(:mod:`~onnxinv.load.read`), choosing (:mod:`~onnxinv.load.choose`) and cutting
(:mod:`~onnxinv.load.surgery`). Their public functions are importable from here too, as they
were before the split.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import onnx

from ..errors import ModelError, first_line
from ..shapes import SampleSizes
from . import repair, runtime
from .choose import check_fixed, choose_input, choose_output, choose_sample
from .graphs import FLOAT_TYPES, declared_dims, graph_inputs, infer_shapes
from .read import ModelLike, read_model
from .surgery import BATCH, bake_fixed, expose_output, extract, output_tail

__all__ = [
    "BATCH",
    "FLOAT_TYPES",
    "LoadedModel",
    "ModelLike",
    "check_fixed",
    "choose_input",
    "choose_output",
    "extract",
    "graph_inputs",
    "load",
    "read_model",
]


@dataclass
class LoadedModel(SampleSizes):
    """A model ready for inversion.

    A *sample* is one full value of the chosen input, of shape ``input_shape``: the input's
    declared shape, without its leading dimension only when that dimension is symbolic (the one
    batch axis onnxinv may use). Internally samples are run in batches where the graph allows.

    Attributes:
        original: the model onnxruntime verifies on: as given, or repaired/upgraded as the
            ``notes`` say.
        name: a short name (file stem) for reports and default output folders.
        input_name: the graph input being inverted.
        output_name: the graph output being matched.
        input_shape: shape of one sample.
        output_shape: shape of one sample's output (the original model's, as run on it).
        input_dtype: numpy dtype the model expects.
        pruned: the graph cut down to ``input_name -> output_name``, fixed inputs baked in as
            constants, batch dimension symbolic when that could be done safely (``batched``).
        unit_shape: one sample's shape along the pruned model's batch axis.
        run_shape: the pruned model's input shape for one sample (``(1, *unit_shape)`` when it
            has a batch axis, else ``input_shape``).
        batch_axis: whether the pruned model's input has a leading batch axis (of size 1 for
            one sample); rules treat it as the batch dimension.
        batched: whether ``pruned`` accepts several samples stacked on that axis in one run.
        original_batched: whether ``original`` accepts a batch of samples in one run.
        fixed: other graph inputs held at given values (fed to ``original`` as they are).
        tail: ``"Softmax"``/``"LogSoftmax"`` when the output is produced by one over its last
            axis, ``"Sigmoid"`` when by a Sigmoid, else ``None``.
        logits_name: the tail's input tensor (logits), when ``tail`` is set.
        opsets: domain → opset version.
        notes: what was repaired or decided on loading, for the report.
        run_seconds: how long one onnxruntime run of ``original`` on one sample took when
            loading (for time budgets).
    """

    original: onnx.ModelProto
    name: str
    input_name: str
    output_name: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    input_dtype: np.dtype
    pruned: onnx.ModelProto
    unit_shape: tuple[int, ...]
    batch_axis: bool
    batched: bool
    original_batched: bool
    tail: str | None
    logits_name: str | None
    opsets: dict[str, int]
    fixed: dict[str, np.ndarray] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    device: str = "cpu"
    run_seconds: float = 0.0
    _sessions: dict = field(default_factory=dict, repr=False)

    @property
    def run_shape(self) -> tuple[int, ...]:
        return (1, *self.unit_shape) if self.batch_axis else tuple(self.input_shape)

    def feed_shape(self, sample_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape one sample of a pruned-graph tensor of ``sample_shape`` is fed with."""
        return (1, *sample_shape) if self.batch_axis else tuple(sample_shape)

    def stack(self, ys: list[np.ndarray]) -> np.ndarray:
        """Per-sample outputs of the pruned graph as one (k, ...) array."""
        if self.batch_axis and all(y.ndim and y.shape[0] == 1 for y in ys):
            return np.concatenate(ys)
        return np.stack(ys)

    def session(self, which: str = "pruned"):
        """A cached onnxruntime session on the ``pruned``, ``original`` or ``logits`` model."""
        if which not in self._sessions:
            if which == "original":
                model = expose_output(self.original, self.output_name)
            elif which == "logits":
                model = self.logits_model
            else:
                model = self.pruned
            self._sessions[which] = runtime.session(model.SerializeToString(), self.device)
        return self._sessions[which]

    @cached_property
    def logits_model(self) -> onnx.ModelProto:
        """The pruned model with the Softmax/LogSoftmax/Sigmoid tail removed (requires
        ``tail``)."""
        if self.logits_name is None:
            raise ModelError("the model's output is not produced by Softmax, LogSoftmax or Sigmoid")
        return extract(self.pruned, self.input_name, self.logits_name, symbolic_batch=False)

    def run(self, x: np.ndarray, which: str = "pruned") -> np.ndarray:
        """Run ``k`` samples ``x`` (k, *input_shape), or flat (k, n), and return (k, ...) outputs.

        ``which="original"`` runs the model exactly as given (with the fixed inputs): this is
        the verification path, and its outputs have shape (k, *output_shape).
        """
        x = np.asarray(x, dtype=self.input_dtype)
        k = len(x)
        sess = self.session(which)
        if which == "original":
            if self.original_batched:
                feeds = self.original_feeds
                ys = [
                    sess.run([self.output_name], {self.input_name: part, **feeds})[0]
                    for part in _chunks(x.reshape((k, *self.input_shape)))
                ]
                return np.concatenate(ys).reshape((k, *self.output_shape))
            return np.stack([self.run_original_one(xi).reshape(self.output_shape) for xi in x])
        out_name = self.logits_name if which == "logits" else self.output_name
        if self.batched:
            ys = [
                sess.run([out_name], {self.input_name: part})[0]
                for part in _chunks(x.reshape((k, *self.unit_shape)))
            ]
            return np.concatenate(ys)
        return self.stack(
            [sess.run([out_name], {self.input_name: xi.reshape(self.run_shape)})[0] for xi in x]
        )

    @cached_property
    def original_feeds(self) -> dict[str, np.ndarray]:
        """What the original model is fed besides the sample: fixed inputs, zeros for unused."""
        return {**_fillers(self.original, self.input_name, self.fixed), **self.fixed}

    def run_original_one(self, x: np.ndarray) -> np.ndarray:
        """The original model's output for one sample, as onnxruntime returns it."""
        shape = (1, *self.input_shape) if self.original_batch_dim else self.input_shape
        feed = {self.input_name: np.asarray(x, self.input_dtype).reshape(shape)}
        return np.asarray(
            self.session("original").run([self.output_name], {**feed, **self.original_feeds})[0]
        )

    @property
    def original_batch_dim(self) -> bool:
        """Whether the original input's leading dimension is a symbolic batch dimension."""
        return len(self.run_shape) == len(self.input_shape) + 1


def _chunks(x: np.ndarray, rows: int = 4096):
    """``x`` in slices of at most ``rows`` samples (bounds onnxruntime's working memory)."""
    for i in range(0, len(x), rows):
        yield x[i : i + rows]


def _fillers(
    model: onnx.ModelProto, chosen: str, fixed: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Zeros for the graph inputs other than ``chosen`` and the fixed ones.

    onnxruntime wants every graph input fed even when the requested output does not depend on
    it; ``extract`` has checked that the chosen output does not, so their values are irrelevant.
    """
    feed = {}
    for vi in graph_inputs(model):
        if vi.name == chosen or vi.name in fixed or not vi.type.HasField("tensor_type"):
            continue
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in declared_dims(vi)]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
        feed[vi.name] = (
            np.full(shape, "", dtype=object)
            if dtype is np.dtype(object)
            else np.zeros(shape, dtype)
        )
    return feed


def load(
    model: ModelLike,
    input: str | None = None,
    output: str | None = None,
    device: str = "cpu",
    seed: int = 0,
    fixed: dict[str, Any] | None = None,
    input_shape: tuple[int, ...] | None = None,
    deadline: float | None = None,
) -> LoadedModel:
    """Load ``model`` and prepare it for inverting ``input`` to match ``output``.

    Args:
        model: a path (external data beside it), bytes or a ModelProto.
        input: the input to invert (default: the one float input not in ``fixed``).
        output: the output to match (default: the one float output).
        device: "cpu" or "cuda" for onnxruntime.
        seed: seed of the probe inputs used to check batching.
        fixed: other inputs held at these values (name → array of the declared shape).
        input_shape: the chosen input's full shape, where the model does not declare it (a -1
            first dimension stays a batch axis), or one sample's shape without the declared
            batch axis (``3,48,192`` for an input declared ``[N, 3, ?, ?]``).
        deadline: a ``time.monotonic()`` value; once it has passed, the optional batch probe is
            skipped (samples then run one at a time), so that loading ends soon after it.

    Raises:
        ModelError: for anything that makes the model unusable, with a one-line reason.
    """
    proto, name, notes = read_model(model)
    proto, upgrade = repair.runnable(proto)
    notes += upgrade
    fixed_arrays = check_fixed(proto, fixed)
    vi_in = choose_input(proto, input, fixed_arrays)
    out_name = choose_output(proto, output)
    shape = choose_sample(vi_in, input_shape)
    if shape.note:
        notes.append(shape.note)
    dtype = np.dtype(FLOAT_TYPES[vi_in.type.tensor_type.elem_type])
    opsets = {o.domain or "ai.onnx": int(o.version) for o in proto.opset_import}

    baked = bake_fixed(proto, vi_in.name, [shape.first, *shape.rest], fixed_arrays)
    inferred = infer_shapes(baked)
    plain = extract(baked, vi_in.name, out_name, symbolic_batch=False, inferred=inferred)
    run_shape = (1, *shape.unit) if shape.batch_axis else shape.sample
    pruned, batched, sessions = plain, False, {}
    if shape.batch_axis:
        candidate = (
            plain
            if shape.symbolic
            else extract(baked, vi_in.name, out_name, True, inferred=inferred)
        )
        same, kept = _same_when_batched(
            plain, candidate, vi_in.name, out_name, run_shape, dtype, seed, deadline
        )
        if same is None:
            notes.append(
                "the timeout was reached while checking whether the model runs on a batch of "
                "samples: samples run one at a time"
            )
        batched = bool(same)
        if batched:
            pruned = candidate
        if kept is not None and device == "cpu":
            sessions["pruned"] = kept  # (a session on ``pruned``, already made)
    tail, logits = output_tail(infer_shapes(pruned), out_name)
    loaded = LoadedModel(
        original=proto,
        name=name,
        input_name=vi_in.name,
        output_name=out_name,
        input_shape=shape.sample,
        output_shape=(),
        input_dtype=dtype,
        pruned=pruned,
        unit_shape=shape.unit,
        batch_axis=shape.batch_axis,
        batched=batched,
        original_batched=shape.symbolic and batched and not fixed_arrays,
        tail=tail,
        logits_name=logits,
        opsets=opsets,
        fixed=fixed_arrays,
        notes=notes,
        device=device,
        _sessions=sessions,
    )
    probe = np.random.default_rng(seed).random((2, *shape.sample)).astype(dtype)
    try:
        loaded.session("original")
        started = time.perf_counter()
        first = loaded.run_original_one(probe[0])
        loaded.run_seconds = time.perf_counter() - started
    except Exception as exc:
        raise ModelError(f"onnxruntime cannot run the model: {first_line(exc)}") from None
    if not np.issubdtype(first.dtype, np.floating):
        raise ModelError(f"output {out_name!r} is {first.dtype}, not a float tensor")
    strip = loaded.original_batch_dim and first.ndim >= 1 and first.shape[0] == 1
    loaded.output_shape = tuple(first.shape[1:] if strip else first.shape)
    try:
        y = loaded.run(probe)
    except Exception as exc:
        raise ModelError(
            f"onnxruntime cannot run the graph cut from {vi_in.name!r} to {out_name!r}: "
            f"{first_line(exc)}"
        ) from None
    if y.size != 2 * loaded.output_size:
        raise ModelError(
            f"the graph cut from {vi_in.name!r} to {out_name!r} gives {y.size // 2} values per "
            f"sample, the model {loaded.output_size}"
        )
    return loaded


def _same_when_batched(
    plain, candidate, in_name, out_name, run_shape, dtype, seed, deadline=None
) -> tuple[bool | None, Any]:
    """Whether ``candidate`` run on a batch gives what ``plain`` gives sample by sample.

    Returns the answer and a session on the model to keep (``candidate`` when the answer is
    yes, else ``plain``; None when none could be made). The sessions are quiet: a graph that
    cannot take a batch (a dynamo export that concatenates a class token of batch 1) makes
    onnxruntime raise, and that is the answer, not something to print. Past ``deadline`` the
    answer is None (not checked).
    """
    rng = np.random.default_rng(seed + 1)
    x = rng.random((3, *run_shape[1:])).astype(dtype)
    s_plain = s_cand = None
    try:
        s_plain = runtime.session(plain.SerializeToString(), quiet=True)
        if _expired(deadline):
            return None, s_plain
        s_cand = (
            s_plain
            if candidate is plain
            else runtime.session(candidate.SerializeToString(), quiet=True)
        )
        y_batch = s_cand.run([out_name], {in_name: x})[0]
        y_each = []
        for xi in x:
            if _expired(deadline):
                return None, s_plain
            y_each.append(s_plain.run([out_name], {in_name: xi[None]})[0])
    except Exception:
        return False, s_plain
    y_one = np.concatenate(y_each)
    same = y_batch.shape == y_one.shape and np.allclose(y_batch, y_one, rtol=1e-5, atol=1e-6)
    return bool(same), s_cand if same else s_plain


def _expired(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() > deadline
