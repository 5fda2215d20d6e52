"""The one place that imports onnxruntime, with a clear message when it is missing."""

from __future__ import annotations

from .errors import OptionError, RuntimeMissingError

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


def session(model_bytes: bytes, device: str = "cpu") -> ort.InferenceSession:
    """An InferenceSession on serialized model bytes, single-threaded-friendly defaults."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(model_bytes, sess_options=opts, providers=providers(device))
