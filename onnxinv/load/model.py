"""Load an ONNX model, choose the input to invert and the output to match, prune, and batch it.

Everything downstream works on a :class:`LoadedModel`: the original model (for verification),
a pruned copy that computes only the chosen output from the chosen input, and, where the graph
ends in Softmax/LogSoftmax, the name of the logits tensor the solvers match instead.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from ..errors import ModelError, OptionError
from . import repair, runtime

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
            axis, else ``None``.
        logits_name: the tail's input tensor (logits), when ``tail`` is set.
        opsets: domain → opset version.
        notes: what was repaired or decided on loading, for the report.
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
    _sessions: dict = field(default_factory=dict, repr=False)

    @property
    def input_size(self) -> int:
        return int(np.prod(self.input_shape))

    @property
    def output_size(self) -> int:
        return int(np.prod(self.output_shape))

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
                model = _exposing(self.original, self.output_name)
            elif which == "logits":
                model = self.logits_model
            else:
                model = self.pruned
            self._sessions[which] = runtime.session(model.SerializeToString(), self.device)
        return self._sessions[which]

    @cached_property
    def logits_model(self) -> onnx.ModelProto:
        """The pruned model with the Softmax/LogSoftmax tail removed (requires ``tail``)."""
        if self.logits_name is None:
            raise ModelError("the model's output is not produced by Softmax or LogSoftmax")
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
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in _dims(vi)]
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


def read_model(model: ModelLike) -> tuple[onnx.ModelProto, str, list[str]]:
    """Read a path, bytes or ModelProto into a checked ModelProto, a short name and notes.

    Safe repairs (topological order, old-IR initializers) are made on a copy and described in
    the notes; a checker complaint that onnxruntime does not share becomes a note too.
    """
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
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)  # repairs never touch the caller's model
    notes = repair.check(copy, name)
    return copy, name, notes


_first_line = repair.first_line


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


def choose_input(
    model: onnx.ModelProto, name: str | None, fixed: Iterable[str] = ()
) -> onnx.ValueInfoProto:
    """The graph input to invert: ``name``, or the single float input not held ``fixed``."""
    inputs = graph_inputs(model)
    fixed = set(fixed)
    if name is not None:
        for vi in inputs:
            if vi.name == name:
                if name in fixed:
                    raise OptionError(f"input {name!r} is both inverted and held fixed")
                if not _is_float_tensor(vi):
                    raise ModelError(
                        f"input {name!r} is {_describe_type(vi)}: only continuous (float) inputs "
                        "can be inverted, not integer ids or strings"
                    )
                return vi
        raise ModelError(
            f"no input named {name!r}; inputs are: {', '.join(i.name for i in inputs)}"
        )
    floats = [vi for vi in inputs if _is_float_tensor(vi) and vi.name not in fixed]
    if not floats:
        kinds = ", ".join(f"{vi.name} ({_describe_type(vi)})" for vi in inputs)
        raise ModelError(
            f"the model has no float input left to invert ({kinds}): only continuous inputs "
            "can be inverted, not integer token ids or strings"
        )
    if len(floats) > 1:
        raise ModelError(
            "the model has several float inputs "
            f"({', '.join(vi.name for vi in floats)}): choose one with --input NAME and hold "
            "the others that the output needs with --fix NAME=FILE.npy"
        )
    return floats[0]


def check_fixed(model: onnx.ModelProto, fixed: dict[str, Any] | None) -> dict[str, np.ndarray]:
    """``fixed`` as arrays of each input's declared type, checked against its declared shape."""
    if not fixed:
        return {}
    if not isinstance(fixed, dict):
        raise OptionError(f"fixed must map input names to arrays, not {type(fixed).__name__}")
    inputs = {vi.name: vi for vi in graph_inputs(model)}
    out: dict[str, np.ndarray] = {}
    for name, value in fixed.items():
        if name not in inputs:
            raise OptionError(
                f"--fix {name}: the model has no input named {name!r}; inputs are: "
                + ", ".join(inputs)
            )
        vi = inputs[name]
        if not vi.type.HasField("tensor_type"):
            raise OptionError(f"--fix {name}: input {name!r} is not a tensor")
        dtype = onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
        try:
            array = np.asarray(value)
            lossy = array.dtype.kind in "fc" and np.dtype(dtype).kind in "iub"
            if lossy and not np.array_equal(array, np.round(array)):
                raise ValueError("non-integer values for an integer input")
            array = array.astype(dtype)
        except (TypeError, ValueError) as exc:
            raise OptionError(
                f"--fix {name}: cannot use the value as {np.dtype(dtype).name} ({exc})"
            ) from None
        dims = _dims(vi)
        if vi.type.tensor_type.HasField("shape"):
            ok = array.ndim == len(dims) and all(
                not (isinstance(d, int) and d > 0) or d == s
                for d, s in zip(dims, array.shape, strict=False)
            )
            if not ok:
                declared = ", ".join(str(d) if isinstance(d, int) and d > 0 else "?" for d in dims)
                raise OptionError(
                    f"--fix {name}: value has shape {list(array.shape)} but the input is "
                    f"declared [{declared}]"
                )
        out[name] = array
    return out


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


def extract(
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
            f"output {output_name!r} also depends on input(s) {', '.join(others)}: hold "
            f"{'them' if len(others) > 1 else 'it'} at a value with --fix "
            f"{others[0]}=FILE.npy (API: fixed={{{others[0]!r}: array}})"
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
    """The Softmax/LogSoftmax producing ``output_name`` over its last axis, if any.

    Identity nodes between it and the output (scikit-learn exports end with one) are looked
    through.
    """
    producer = next((n for n in model.graph.node if output_name in n.output), None)
    while producer is not None and producer.op_type == "Identity":
        output_name = producer.input[0]
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


def _sample_dims(
    vi: onnx.ValueInfoProto, input_shape: tuple[int, ...] | None
) -> list[int | str | None]:
    """The chosen input's dims: declared, or ``input_shape`` where the user gave one."""
    declared = _dims(vi) if vi.type.tensor_type.HasField("shape") else None
    if input_shape is None:
        if declared is None:
            raise ModelError(
                f"input {vi.name!r} has no declared shape; give it with --input-shape "
                "(API: input_shape=), e.g. --input-shape 1,3,224,224"
            )
        return declared
    given = [int(d) for d in input_shape]
    if declared is not None:
        if len(given) != len(declared):
            raise OptionError(
                f"--input-shape {','.join(map(str, given))} has {len(given)} dimensions but input "
                f"{vi.name!r} is declared with {len(declared)}"
            )
        for i, (g, d) in enumerate(zip(given, declared, strict=True)):
            if isinstance(d, int) and d > 0 and g != d:
                raise OptionError(
                    f"--input-shape: dimension {i} of input {vi.name!r} is declared {d}, not {g}"
                )
    dims: list[int | str | None] = [g if g > 0 else None for g in given]
    if any(d is None for d in dims[1:]):
        raise OptionError("--input-shape: only the first dimension may be -1 (a batch axis)")
    return dims


def _bake(
    model: onnx.ModelProto,
    input_name: str,
    dims: list[int | str | None],
    fixed: dict[str, np.ndarray],
) -> onnx.ModelProto:
    """A copy of ``model`` with ``fixed`` inputs as initializers and the input's dims set."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    keep = [vi for vi in copy.graph.input if vi.name not in fixed]
    del copy.graph.input[:]
    copy.graph.input.extend(keep)
    for name, value in fixed.items():
        inits = [i for i in copy.graph.initializer if i.name != name]
        del copy.graph.initializer[:]
        copy.graph.initializer.extend([*inits, numpy_helper.from_array(value, name)])
    for vi in copy.graph.input:
        if vi.name == input_name:
            shape = vi.type.tensor_type.shape
            shape.Clear()
            for d in dims:
                dim = shape.dim.add()
                if isinstance(d, int) and d > 0:
                    dim.dim_value = d
                else:
                    dim.dim_param = BATCH
    if copy.ir_version < 4 and fixed:
        copy.ir_version = 4  # the baked constants are initializers that are not inputs
    return copy


def load(
    model: ModelLike,
    input: str | None = None,
    output: str | None = None,
    device: str = "cpu",
    seed: int = 0,
    fixed: dict[str, Any] | None = None,
    input_shape: tuple[int, ...] | None = None,
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
            first dimension stays a batch axis).

    Raises:
        ModelError: for anything that makes the model unusable, with a one-line reason.
    """
    proto, name, notes = read_model(model)
    proto, upgrade = repair.runnable(proto)
    notes += upgrade
    fixed_arrays = check_fixed(proto, fixed)
    vi_in = choose_input(proto, input, fixed_arrays)
    out_name = choose_output(proto, output)
    dims = _sample_dims(vi_in, input_shape)
    if not dims:
        raise ModelError(f"input {vi_in.name!r} is a scalar; there is nothing to invert")
    for i, d in enumerate(dims[1:], start=1):
        if not isinstance(d, int) or d <= 0:
            raise ModelError(
                f"input {vi_in.name!r} has dynamic dimension {i} ({d!r}); give its shape with "
                "--input-shape (API: input_shape=), e.g. --input-shape "
                + ",".join(str(v) if isinstance(v, int) and v > 0 else "1" for v in dims)
            )
    dtype = np.dtype(FLOAT_TYPES[vi_in.type.tensor_type.elem_type])
    d0 = dims[0]
    symbolic0 = not (isinstance(d0, int) and d0 > 0)
    static = tuple(int(d) for d in dims[1:])
    if symbolic0 and len(dims) >= 2:
        sample, unit, batch_axis = static, static, True  # the symbolic axis is the batch
    elif symbolic0:
        sample, unit, batch_axis = (1,), (1,), False  # a 1-D input of unknown length
        notes.append(
            f"input {vi_in.name!r} is 1-D with a symbolic length; inverting length 1 "
            "(give another with --input-shape)"
        )
    else:
        sample = (int(d0), *static)
        batch_axis = d0 == 1 and len(dims) >= 2  # a fixed batch of one, as exporters write it
        unit = static if batch_axis else sample
    opsets = {o.domain or "ai.onnx": int(o.version) for o in proto.opset_import}

    baked = _bake(proto, vi_in.name, [d0 if not symbolic0 else None, *static], fixed_arrays)
    inferred = _infer(baked)
    plain = extract(baked, vi_in.name, out_name, symbolic_batch=False, inferred=inferred)
    run_shape = (1, *unit) if batch_axis else sample
    pruned, batched = plain, False
    if batch_axis:
        candidate = (
            plain if symbolic0 else extract(baked, vi_in.name, out_name, True, inferred=inferred)
        )
        batched = _same_when_batched(plain, candidate, vi_in.name, out_name, run_shape, dtype, seed)
        if batched:
            pruned = candidate
    tail, logits = _tail(_infer(pruned), out_name)
    loaded = LoadedModel(
        original=proto,
        name=name,
        input_name=vi_in.name,
        output_name=out_name,
        input_shape=tuple(sample),
        output_shape=(),
        input_dtype=dtype,
        pruned=pruned,
        unit_shape=tuple(unit),
        batch_axis=batch_axis,
        batched=batched,
        original_batched=symbolic0 and batched and not fixed_arrays,
        tail=tail,
        logits_name=logits,
        opsets=opsets,
        fixed=fixed_arrays,
        notes=notes,
        device=device,
    )
    probe = np.random.default_rng(seed).random((2, *sample)).astype(dtype)
    try:
        first = loaded.run_original_one(probe[0])
    except Exception as exc:
        raise ModelError(f"onnxruntime cannot run the model: {_first_line(exc)}") from None
    if not np.issubdtype(first.dtype, np.floating):
        raise ModelError(f"output {out_name!r} is {first.dtype}, not a float tensor")
    strip = loaded.original_batch_dim and first.ndim >= 1 and first.shape[0] == 1
    loaded.output_shape = tuple(first.shape[1:] if strip else first.shape)
    try:
        y = loaded.run(probe)
    except Exception as exc:
        raise ModelError(
            f"onnxruntime cannot run the graph cut from {vi_in.name!r} to {out_name!r}: "
            f"{_first_line(exc)}"
        ) from None
    if y.size != 2 * loaded.output_size:
        raise ModelError(
            f"the graph cut from {vi_in.name!r} to {out_name!r} gives {y.size // 2} values per "
            f"sample, the model {loaded.output_size}"
        )
    return loaded


def _same_when_batched(plain, candidate, in_name, out_name, run_shape, dtype, seed) -> bool:
    """Whether ``candidate`` run on a batch gives what ``plain`` gives sample by sample."""
    rng = np.random.default_rng(seed + 1)
    x = rng.random((3, *run_shape[1:])).astype(dtype)
    try:
        s_plain = runtime.session(plain.SerializeToString())
        s_cand = s_plain if candidate is plain else runtime.session(candidate.SerializeToString())
        y_batch = s_cand.run([out_name], {in_name: x})[0]
        y_each = np.concatenate([s_plain.run([out_name], {in_name: xi[None]})[0] for xi in x])
    except Exception:
        return False
    return y_batch.shape == y_each.shape and np.allclose(y_batch, y_each, rtol=1e-5, atol=1e-6)
