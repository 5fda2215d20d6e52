"""The one place that imports onnxruntime, with a clear message when it is missing."""

from __future__ import annotations

import numpy as np
import onnx

from ..errors import OptionError, RuntimeMissingError
from .graphs import infer_shapes

try:
    import onnxruntime as ort
except ImportError as exc:  # pragma: no cover - exercised only without the extras
    raise RuntimeMissingError(
        "onnxinv needs onnxruntime: install the 'cpu' extra (pip install 'onnxinv[cpu]') "
        "or the 'gpu' extra (pip install 'onnxinv[gpu]'), not both"
    ) from exc

ort.set_default_logger_severity(3)


def providers(device: str = "cpu") -> list[str]:
    """Execution providers for ``device`` ('cpu' or 'cuda'), checked against this install."""
    available = ort.get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "cuda":
        if "CUDAExecutionProvider" not in available:
            raise OptionError(
                "device 'cuda' requested but onnxruntime has no CUDAExecutionProvider "
                "(install the 'gpu' extra instead of 'cpu')"
            )
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    raise OptionError(f"unknown device {device!r}: use 'cpu' or 'cuda'")


#: Threads each session's operators may use (0: onnxruntime's default, one per core). A sweep's
#: worker processes set it so that workers × threads stays within the machine's cores.
INTRA_OP_THREADS = 0


def session(model_bytes: bytes, device: str = "cpu", quiet: bool = False) -> ort.InferenceSession:
    """An InferenceSession on serialized model bytes, single-threaded-friendly defaults.

    ``quiet``: for probes, whose failure is an answer (does the graph run on a batch? does
    onnxruntime load this opset?): onnxruntime's own logger then prints nothing, not even the
    error it also raises (severity 4, fatal only).
    """
    opts = ort.SessionOptions()
    opts.log_severity_level = 4 if quiet else 3
    if INTRA_OP_THREADS:
        opts.intra_op_num_threads = INTRA_OP_THREADS
    return ort.InferenceSession(model_bytes, sess_options=opts, providers=providers(device))


def all_values(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every tensor node output of ``model`` (not only its graph outputs) on ``feeds``.

    Outputs are exposed with their inferred types; sequences and maps (and outputs whose type
    inference cannot tell, when exposing them untyped fails) are left out.
    """
    inferred = infer_shapes(model)
    types = {vi.name: vi for vi in (*inferred.graph.value_info, *inferred.graph.output)}
    present = {o.name for o in model.graph.output}
    typed, untyped = [], []
    for node in model.graph.node:
        for name in node.output:
            if not name or name in present:
                continue
            present.add(name)
            vi = types.get(name)
            if vi is None or not vi.type.WhichOneof("value"):
                untyped.append(onnx.ValueInfoProto(name=name))
            elif vi.type.HasField("tensor_type"):
                typed.append(vi)
    for extra in (untyped, []):
        probe = onnx.ModelProto()
        probe.CopyFrom(model)
        probe.graph.output.extend([*typed, *extra])
        try:
            sess = session(probe.SerializeToString())
            break
        except Exception:
            if not extra:
                raise
    names = [o.name for o in sess.get_outputs()]
    results = sess.run(names, feeds)
    return {
        name: value
        for name, value in zip(names, results, strict=True)
        if isinstance(value, np.ndarray)
    }
