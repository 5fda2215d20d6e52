"""Run one ONNX node by itself in onnxruntime.

:class:`NodeRunner` holds a one-node model: the node with its attributes, its constant inputs
baked in as initializers, and the other inputs fed at run time. It runs in the precision it is
fed when onnxruntime has kernels for it (float64 after ``.double()``), and otherwise in the
node's declared types, casting the inputs there.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper


@dataclass(frozen=True)
class NodeSpec:
    """A node and what running it alone needs.

    Attributes:
        node: the node itself.
        fed: names of the inputs fed at run time, in node input order (non-empty, not constant).
        declared: the declared element type of each fed input (0 when unknown).
        constants: the node's constant inputs, as initializers.
        opsets: the model's opset imports as ``(domain, version)``.
        ir_version: the model's IR version.
    """

    node: onnx.NodeProto
    fed: tuple[str, ...]
    declared: tuple[int, ...]
    constants: tuple[onnx.TensorProto, ...]
    opsets: tuple[tuple[str, int], ...]
    ir_version: int

    @property
    def outputs(self) -> tuple[str, ...]:
        """The node's output names, ``''`` where an optional output is omitted."""
        return tuple(self.node.output)

    def model(self, fed_types: list[int], double_constants: bool) -> onnx.ModelProto:
        """The one-node model fed ``fed_types``; float32 constants made float64 if asked."""
        constants = list(self.constants)
        if double_constants:
            constants = [_as_double(t) for t in constants]
        graph = helper.make_graph(
            [self.node],
            "node",
            [
                helper.make_tensor_value_info(n, t, None)
                for n, t in zip(self.fed, fed_types, strict=True)
            ],
            [onnx.ValueInfoProto(name=name) for name in self.outputs if name],
            initializer=constants,
        )
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid(d, v) for d, v in self.opsets]
        )
        model.ir_version = max(self.ir_version, 4)
        return model


def _as_double(tensor: onnx.TensorProto) -> onnx.TensorProto:
    if tensor.data_type != TensorProto.FLOAT:
        return tensor
    return numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float64), tensor.name)


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 4  # failures are exceptions; kernels may refuse a dtype
    options.intra_op_num_threads = 1
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


@dataclass
class _Plan:
    session: ort.InferenceSession
    dtypes: list[np.dtype]  # what each fed input is cast to
    attempt: int  # which of the attempts this is
    more: bool  # whether a later attempt is left


@dataclass
class NodeRunner:
    """Runs a :class:`NodeSpec` on numpy inputs; sessions are built per input dtypes and kept.

    Sessions are not pickled or deep-copied: a copy builds its own when first run.
    """

    spec: NodeSpec
    _plans: dict[tuple[str, ...], _Plan] = field(default_factory=dict, repr=False)

    def __getstate__(self) -> dict:
        return {"spec": self.spec, "_plans": {}}

    def __deepcopy__(self, memo: dict) -> NodeRunner:
        return NodeRunner(self.spec)

    def _attempts(self, arrays: list[np.ndarray]) -> list[tuple[list[int], bool]]:
        """(fed types, float32 constants made float64) to try, the precision fed first."""
        fed = [helper.np_dtype_to_tensor_dtype(a.dtype) for a in arrays]
        declared = [d or f for d, f in zip(self.spec.declared, fed, strict=True)]
        doubled = any(
            f == TensorProto.DOUBLE and d == TensorProto.FLOAT
            for f, d in zip(fed, declared, strict=True)
        )
        return [(fed, doubled)] if fed == declared else [(fed, doubled), (declared, False)]

    def _plan(self, arrays: list[np.ndarray], skip: int = 0) -> _Plan:
        key = tuple(a.dtype.str for a in arrays)
        plan = self._plans.get(key)
        if plan is not None and plan.attempt >= skip:
            return plan
        attempts = self._attempts(arrays)
        error: Exception | None = None
        for index in range(skip, len(attempts)):
            types, double_constants = attempts[index]
            try:
                session = _session(self.spec.model(types, double_constants))
            except Exception as exc:  # no kernel for these types: try the declared ones
                error = exc
                continue
            dtypes = [np.dtype(helper.tensor_dtype_to_np_dtype(t)) for t in types]
            plan = self._plans[key] = _Plan(session, dtypes, index, index + 1 < len(attempts))
            return plan
        if error is None:
            raise RuntimeError("no way left to run the node")
        raise error

    def compute_dtypes(self, arrays: list[np.ndarray]) -> list[np.dtype]:
        """The dtypes onnxruntime computes in when fed ``arrays``."""
        return self._plan(arrays).dtypes

    def run(self, arrays: list[np.ndarray]) -> list[np.ndarray | None]:
        """The node's outputs (None where omitted) on the fed inputs ``arrays``.

        A kernel that loads but refuses to run in the fed precision (onnxruntime's LSTM in
        float64) makes the node run in its declared types from then on.
        """
        plan = self._plan(arrays)
        try:
            return self._run(plan, arrays)
        except Exception:
            if not plan.more:
                raise
        return self._run(self._plan(arrays, skip=plan.attempt + 1), arrays)

    def _run(self, plan: _Plan, arrays: list[np.ndarray]) -> list[np.ndarray | None]:
        feeds = {
            name: np.ascontiguousarray(a, dtype=d)
            for name, a, d in zip(self.spec.fed, arrays, plan.dtypes, strict=True)
        }
        names = [name for name in self.spec.outputs if name]
        values = dict(zip(names, plan.session.run(names, feeds), strict=True))
        return [values[name] if name else None for name in self.spec.outputs]
