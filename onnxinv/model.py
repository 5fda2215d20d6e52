"""Load an ONNX model, choose the input to invert and the output to match, prune, and batch it.

Everything downstream works on a :class:`LoadedModel`: the original model (for verification),
a pruned copy that computes only the chosen output from the chosen input, and, where the graph
ends in Softmax/LogSoftmax, the name of the logits tensor the solvers match instead.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from . import _ort
from .errors import ModelError

FLOAT_TYPES = {
    TensorProto.FLOAT: np.float32,
    TensorProto.DOUBLE: np.float64,
    TensorProto.FLOAT16: np.float16,
}
BATCH = "onnxinv_batch"

ModelLike = str | os.PathLike | bytes | onnx.ModelProto


@dataclass
class LoadedModel:
    """A model ready for inversion.

    Attributes:
        original: the model as given (checked), used for verification.
        name: a short name (file stem) for reports and default output folders.
        input_name: the graph input being inverted.
        output_name: the graph output being matched.
        input_shape: shape of one sample (without the batch dimension).
        output_shape: shape of one sample's output.
        input_dtype: numpy dtype the model expects.
        pruned: the graph cut down to ``input_name -> output_name``, batch dimension symbolic
            when that could be done safely (``batched``).
        batched: whether ``pruned`` accepts a batch of samples in one run.
        original_batched: whether ``original`` accepts a batch of samples in one run.
        tail: ``"Softmax"``/``"LogSoftmax"`` when the output is produced by one over its last
            axis, else ``None``.
        logits_name: the tail's input tensor (logits), when ``tail`` is set.
        opsets: domain → opset version.
    """

    original: onnx.ModelProto
    name: str
    input_name: str
    output_name: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    input_dtype: np.dtype
    pruned: onnx.ModelProto
    batched: bool
    original_batched: bool
    original_input_shape: tuple[int, ...]
    tail: str | None
    logits_name: str | None
    opsets: dict[str, int]
    device: str = "cpu"
    _sessions: dict = field(default_factory=dict, repr=False)

    @property
    def input_size(self) -> int:
        return int(np.prod(self.input_shape))

    @property
    def output_size(self) -> int:
        return int(np.prod(self.output_shape))

    def session(self, which: str = "pruned"):
        """A cached onnxruntime session on the ``pruned``, ``original`` or ``logits`` model."""
        if which not in self._sessions:
            model = {"pruned": self.pruned, "original": self.original}.get(which)
            if which == "original":
                model = _exposing(self.original, self.output_name)
            if which == "logits":
                model = self.logits_model
            self._sessions[which] = _ort.session(model.SerializeToString(), self.device)
        return self._sessions[which]

    @cached_property
    def logits_model(self) -> onnx.ModelProto:
        """The pruned model with the Softmax/LogSoftmax tail removed (requires ``tail``)."""
        if self.logits_name is None:
            raise ModelError("the model's output is not produced by Softmax or LogSoftmax")
        return _extract(self.pruned, self.input_name, self.logits_name, symbolic_batch=False)

    def run(self, x: np.ndarray, which: str = "pruned") -> np.ndarray:
        """Run ``x`` of shape (N, *input_shape) and return (N, *output_shape) outputs.

        ``which="original"`` runs the model exactly as given: this is the verification path.
        """
        x = np.asarray(x, dtype=self.input_dtype)
        batched = self.original_batched if which == "original" else self.batched
        sess = self.session(which)
        out_name = self.logits_name if which == "logits" else self.output_name
        others = {}
        if which == "original":
            others = _fillers(self.original, self.input_name, len(x) if batched else 1)
        if batched:
            feed = x.reshape((x.shape[0], *self.original_input_shape[1:]))
            return sess.run([out_name], {self.input_name: feed, **others})[0]
        ys = [
            sess.run(
                [out_name], {self.input_name: xi.reshape(self.original_input_shape), **others}
            )[0]
            for xi in x
        ]
        return np.stack(
            [y.reshape(_per_sample_fixed(y.shape, self.original_input_shape)) for y in ys]
        )


def _fillers(model: onnx.ModelProto, chosen: str, batch: int) -> dict[str, np.ndarray]:
    """Zeros for the graph inputs other than ``chosen``.

    onnxruntime wants every graph input fed even when the requested output does not depend on
    it; ``_extract`` has checked that the chosen output does not, so their values are irrelevant.
    """
    feed = {}
    for vi in graph_inputs(model):
        if vi.name == chosen or not vi.type.HasField("tensor_type"):
            continue
        shape = [
            d if isinstance(d, int) and d > 0 else (batch if i == 0 else 1)
            for i, d in enumerate(_dims(vi))
        ]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
        feed[vi.name] = (
            np.full(shape, "", dtype=object)
            if dtype is np.dtype(object)
            else np.zeros(shape, dtype)
        )
    return feed


def _exposing(model: onnx.ModelProto, name: str) -> onnx.ModelProto:
    """``model`` unchanged, or a copy that also lists the inner tensor ``name`` as a graph output.

    The chosen output may be an inner tensor (a ZipMap's input, or one named with ``output=``);
    exposing it changes nothing that the model computes.
    """
    if name in {o.name for o in model.graph.output}:
        return model
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    copy.graph.output.append(onnx.ValueInfoProto(name=name))
    return copy


def _per_sample_fixed(shape: tuple[int, ...], input_shape: tuple[int, ...]) -> tuple[int, ...]:
    # A model run one sample at a time with a leading batch of 1 drops that 1 from its output.
    if len(input_shape) >= 2 and input_shape[0] == 1 and len(shape) >= 1 and shape[0] == 1:
        return tuple(shape[1:])
    return tuple(shape)


def read_model(model: ModelLike) -> tuple[onnx.ModelProto, str]:
    """Read a path, bytes or ModelProto into a checked ModelProto and a short name."""
    if isinstance(model, onnx.ModelProto):
        proto, name = model, (model.graph.name or "model")
    elif isinstance(model, bytes | bytearray):
        try:
            proto = onnx.load_from_string(bytes(model))
        except Exception as exc:
            raise ModelError(
                f"the bytes given are not an ONNX model ({_first_line(exc)})"
            ) from None
        name = proto.graph.name or "model"
    elif isinstance(model, str | os.PathLike):
        path = Path(model)
        if not path.exists():
            raise ModelError(f"model file not found: {path}")
        if not path.is_file():
            raise ModelError(f"model path is not a file: {path}")
        try:
            proto = onnx.load(str(path), load_external_data=False)
        except Exception as exc:
            raise ModelError(f"{path} is not an ONNX model ({_first_line(exc)})") from None
        if not proto.graph.node and not proto.graph.output:
            raise ModelError(f"{path} is not an ONNX model (no graph in it)")
        for tensor in proto.graph.initializer:
            if onnx.external_data_helper.uses_external_data(tensor):
                location = onnx.external_data_helper.ExternalDataInfo(tensor).location
                if not (path.parent / location).is_file():
                    raise ModelError(
                        f"{path} refers to external data {location!r} that is not beside it"
                    )
        try:
            onnx.external_data_helper.load_external_data_for_model(proto, str(path.parent))
        except FileNotFoundError as exc:
            missing = Path(exc.filename).name if exc.filename else "a data file"
            raise ModelError(
                f"{path} refers to external data {missing!r} that is not beside it"
            ) from None
        except Exception as exc:
            raise ModelError(f"cannot load external data of {path}: {_first_line(exc)}") from None
        name = path.stem
    else:
        raise ModelError(
            f"model must be a path, bytes or onnx.ModelProto, not {type(model).__name__}"
        )
    if not proto.graph.node:
        raise ModelError(f"model {name!r} has no nodes")
    try:
        onnx.checker.check_model(proto)
    except Exception as exc:
        raise ModelError(f"model {name!r} fails the ONNX checker: {_first_line(exc)}") from None
    return proto, name


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


def _dims(value_info: onnx.ValueInfoProto) -> list[int | str | None]:
    dims: list[int | str | None] = []
    for d in value_info.type.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return dims


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Graph inputs that are real inputs (not initializers listed as inputs)."""
    inits = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def _is_float_tensor(vi: onnx.ValueInfoProto) -> bool:
    return vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type in FLOAT_TYPES


def _describe_type(vi: onnx.ValueInfoProto) -> str:
    if vi.type.HasField("tensor_type"):
        return TensorProto.DataType.Name(vi.type.tensor_type.elem_type).lower()
    return vi.type.WhichOneof("value") or "unknown"


def choose_input(model: onnx.ModelProto, name: str | None) -> onnx.ValueInfoProto:
    """The graph input to invert: ``name``, or the single float input."""
    inputs = graph_inputs(model)
    if name is not None:
        for vi in inputs:
            if vi.name == name:
                if not _is_float_tensor(vi):
                    raise ModelError(
                        f"input {name!r} is {_describe_type(vi)}: only continuous (float) inputs "
                        "can be inverted, not integer ids or strings"
                    )
                return vi
        raise ModelError(
            f"no input named {name!r}; inputs are: {', '.join(i.name for i in inputs)}"
        )
    floats = [vi for vi in inputs if _is_float_tensor(vi)]
    if not floats:
        kinds = ", ".join(f"{vi.name} ({_describe_type(vi)})" for vi in inputs)
        raise ModelError(
            f"the model has no float input ({kinds}): only continuous inputs can be inverted, "
            "not integer token ids or strings"
        )
    if len(floats) > 1:
        raise ModelError(
            "the model has several float inputs "
            f"({', '.join(vi.name for vi in floats)}): choose one with --input NAME"
        )
    return floats[0]


def choose_output(model: onnx.ModelProto, name: str | None) -> str:
    """The graph output to match: ``name``, or the single float tensor output.

    An output produced by ``ZipMap`` (scikit-learn's dict-of-probabilities) is replaced by the
    ZipMap's input tensor, which holds the same probabilities as a tensor.
    """
    outputs = list(model.graph.output)
    producers = {o: n for n in model.graph.node for o in n.output}
    if name is not None:
        if name not in {o.name for o in outputs} and name not in producers:
            raise ModelError(
                f"no output named {name!r}; outputs are: {', '.join(o.name for o in outputs)}"
            )
        chosen = name
    else:
        candidates = []
        for o in outputs:
            node = producers.get(o.name)
            if _is_float_tensor(o) or (node is not None and node.op_type == "ZipMap"):
                candidates.append(o.name)
        if not candidates:
            raise ModelError("the model has no float tensor output to match")
        if len(candidates) > 1:
            raise ModelError(
                f"the model has several float outputs ({', '.join(candidates)}): choose one with "
                '--output NAME or the target\'s "output" key'
            )
        chosen = candidates[0]
    node = producers.get(chosen)
    if node is not None and node.op_type == "ZipMap":
        chosen = node.input[0]
    return chosen


def _infer(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with inferred shapes, or as it is when inference fails."""
    try:
        return onnx.shape_inference.infer_shapes(model)
    except Exception:
        return model


def _extract(
    model: onnx.ModelProto,
    input_name: str,
    output_name: str,
    symbolic_batch: bool,
    inferred: onnx.ModelProto | None = None,
):
    """The subgraph computing ``output_name`` from ``input_name`` (and constants only).

    ``inferred`` is ``model`` with shapes already inferred, when the caller has it.
    """
    inferred = _infer(model) if inferred is None else inferred
    known = {vi.name for g in (inferred.graph.value_info, inferred.graph.input) for vi in g}
    known |= {vi.name for vi in inferred.graph.output}
    if output_name not in known:
        # Shape inference knows nothing of some operators' outputs (e.g. ai.onnx.ml's
        # Normalizer before a ZipMap); the Extractor needs a value_info for every output, and
        # onnxruntime infers the type of an untyped one.
        typed = onnx.ModelProto()
        typed.CopyFrom(inferred)  # the caller's model stays as it was
        typed.graph.value_info.append(onnx.ValueInfoProto(name=output_name))
        inferred = typed
    try:
        sub = onnx.utils.Extractor(inferred).extract_model([input_name], [output_name])
    except Exception as exc:
        raise ModelError(
            f"cannot cut the graph from {input_name!r} to {output_name!r}: {_first_line(exc)}"
        ) from None
    # The Extractor makes the chosen input the only graph input and stops its search there, so
    # another graph input the output depends on is left as a dangling node input; it would have
    # to be fed, which we cannot do.
    available = {"", *(o for n in sub.graph.node for o in n.output)}
    available |= {i.name for i in sub.graph.initializer} | {vi.name for vi in sub.graph.input}
    consumed = _consumed(sub.graph.node)
    model_inputs = {vi.name for vi in graph_inputs(model)}
    others = sorted({i for i in consumed if i not in available and i in model_inputs})
    if others:
        raise ModelError(
            f"output {output_name!r} also depends on input(s) {', '.join(others)}; onnxinv "
            "inverts one input and cannot fill the others"
        )
    if input_name not in consumed and input_name != output_name:
        raise ModelError(f"output {output_name!r} does not depend on input {input_name!r}")
    del sub.opset_import[:]
    sub.opset_import.extend(model.opset_import)
    sub.ir_version = model.ir_version
    if symbolic_batch:
        _make_batch_symbolic(sub, input_name)
    return sub


def _consumed(nodes) -> list[str]:
    """Every name ``nodes`` read, including outer-scope names read inside If/Loop/Scan bodies."""
    names: list[str] = []
    for node in nodes:
        names.extend(node.input)
        for attr in node.attribute:
            for graph in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                names.extend(_consumed(graph.node))
    return names


def _make_batch_symbolic(model: onnx.ModelProto, input_name: str) -> None:
    """Turn a leading dimension of 1 into a symbolic batch dimension, in place.

    Reshape targets that start with 1 (as the dynamo exporter writes them) become -1 when they
    have no -1 already. Whether the result is right is checked numerically by the caller.
    """
    for vi in model.graph.input:
        if vi.name == input_name:
            d0 = vi.type.tensor_type.shape.dim[0]
            d0.Clear()
            d0.dim_param = BATCH
    inits = {i.name: i for i in model.graph.initializer}
    consts = {n.output[0]: n for n in model.graph.node if n.op_type == "Constant"}
    for node in model.graph.node:
        if node.op_type != "Reshape" or len(node.input) < 2:
            continue
        src = node.input[1]
        if src in inits:
            shape = numpy_helper.to_array(inits[src])
            if shape.size and shape[0] == 1 and -1 not in shape:
                new = shape.copy()
                new[0] = -1
                inits[src].CopyFrom(numpy_helper.from_array(new, src))
        elif src in consts:
            attr = next((a for a in consts[src].attribute if a.name == "value"), None)
            if attr is not None:
                shape = numpy_helper.to_array(attr.t)
                if shape.size and shape[0] == 1 and -1 not in shape:
                    new = shape.copy()
                    new[0] = -1
                    attr.t.CopyFrom(numpy_helper.from_array(new, attr.t.name))
    del model.graph.value_info[:]
    for o in model.graph.output:
        if o.type.HasField("tensor_type"):
            o.type.tensor_type.ClearField("shape")


def _tail(model: onnx.ModelProto, output_name: str) -> tuple[str | None, str | None]:
    """The Softmax/LogSoftmax producing ``output_name`` over its last axis, if any."""
    producer = next((n for n in model.graph.node if output_name in n.output), None)
    if producer is None or producer.op_type not in ("Softmax", "LogSoftmax"):
        return None, None
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    axis = next((a.i for a in producer.attribute if a.name == "axis"), -1 if opset >= 13 else 1)
    rank = None
    for vi in list(model.graph.value_info) + list(model.graph.output):
        if vi.name == output_name and vi.type.tensor_type.HasField("shape"):
            rank = len(vi.type.tensor_type.shape.dim)
    if rank is None:
        return None, None
    if axis in (-1, rank - 1) or (opset < 13 and axis == rank - 1):
        return producer.op_type, producer.input[0]
    return None, None


def load(
    model: ModelLike,
    input: str | None = None,
    output: str | None = None,
    device: str = "cpu",
    seed: int = 0,
) -> LoadedModel:
    """Load ``model`` and prepare it for inverting ``input`` to match ``output``.

    Raises:
        ModelError: for anything that makes the model unusable, with a one-line reason.
    """
    proto, name = read_model(model)
    vi_in = choose_input(proto, input)
    out_name = choose_output(proto, output)
    dims = _dims(vi_in)
    if not dims:
        raise ModelError(f"input {vi_in.name!r} is a scalar; there is nothing to invert")
    for i, d in enumerate(dims[1:], start=1):
        if not isinstance(d, int) or d <= 0:
            how = (
                f"--dim_param {d} --dim_value N"
                if isinstance(d, str)
                else f"--input_name {vi_in.name} --input_shape "
                + ",".join(str(v) if isinstance(v, int) and v > 0 else "N" for v in dims)
            )
            raise ModelError(
                f"input {vi_in.name!r} has dynamic dimension {i} ({d!r}); fix it before inverting, "
                f"e.g. python -m onnxruntime.tools.make_dynamic_shape_fixed {how} "
                "model.onnx fixed.onnx (or re-export with a static shape)"
            )
    d0 = dims[0]
    dtype = np.dtype(FLOAT_TYPES[vi_in.type.tensor_type.elem_type])
    if isinstance(d0, int) and d0 > 0:
        fixed_shape = tuple(int(d) for d in dims)
    else:
        fixed_shape = (1, *(int(d) for d in dims[1:]))
    leading_batch = not (isinstance(d0, int) and d0 > 1) and len(dims) >= 2
    sample_shape = fixed_shape[1:] if leading_batch else fixed_shape
    opsets = {o.domain or "ai.onnx": int(o.version) for o in proto.opset_import}

    # Prune; try a symbolic batch dimension and keep it only if it computes the same thing.
    inferred = _infer(proto)
    plain = _extract(proto, vi_in.name, out_name, symbolic_batch=False, inferred=inferred)
    pruned, batched = plain, not isinstance(d0, int)
    if leading_batch and isinstance(d0, int):
        candidate = _extract(proto, vi_in.name, out_name, True, inferred=inferred)
        batched = _same_when_batched(
            plain, candidate, vi_in.name, out_name, fixed_shape, dtype, seed
        )
        if batched:
            pruned = candidate
    tail, logits = _tail(_infer(pruned), out_name)
    lm = LoadedModel(
        original=proto,
        name=name,
        input_name=vi_in.name,
        output_name=out_name,
        input_shape=tuple(sample_shape),
        output_shape=(),
        input_dtype=dtype,
        pruned=pruned,
        batched=batched,
        original_batched=not isinstance(d0, int),
        original_input_shape=fixed_shape,
        tail=tail,
        logits_name=logits,
        opsets=opsets,
        device=device,
    )
    probe = np.random.default_rng(seed).random((2, *sample_shape)).astype(dtype)
    try:
        y = lm.run(probe)
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"onnxruntime cannot run the model: {_first_line(exc)}") from None
    if not np.issubdtype(y.dtype, np.floating):
        raise ModelError(f"output {out_name!r} is {y.dtype}, not a float tensor")
    if lm.batched and (y.ndim == 0 or y.shape[0] != len(probe)):
        # The graph mixes the batch dimension (e.g. Reshape to [1, -1]): run one sample at a
        # time, with the batch of 1 the model was evidently written for.
        lm.batched = lm.original_batched = False
        lm.original_input_shape = (1, *sample_shape)
        y = lm.run(probe)
    lm.output_shape = tuple(y.shape[1:])
    return lm


def _same_when_batched(plain, candidate, in_name, out_name, fixed_shape, dtype, seed) -> bool:
    """Whether ``candidate`` run on a batch gives what ``plain`` gives sample by sample."""
    rng = np.random.default_rng(seed + 1)
    x = rng.random((3, *fixed_shape[1:])).astype(dtype)
    try:
        s_plain = _ort.session(plain.SerializeToString())
        s_cand = _ort.session(candidate.SerializeToString())
        y_batch = s_cand.run([out_name], {in_name: x})[0]
        y_each = np.concatenate([s_plain.run([out_name], {in_name: xi[None]})[0] for xi in x])
    except Exception:
        return False
    return y_batch.shape == y_each.shape and np.allclose(y_batch, y_each, rtol=1e-5, atol=1e-6)
