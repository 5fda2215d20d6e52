"""Teach onnx2torch the operator versions that current exporters emit (opset 18-25 and later).

onnx2torch needs a converter registered for the exact since_version of each operator's schema at
the model's opset, and most of its converters stop at opset 13-17. Most newer versions only add
tensor types (bfloat16, float8, int4, ...) that a float32 or float64 network never uses, so the
newest older converter is exact for them: :data:`ALIASES` lists those, each with the newest
since_version whose changelog entry was reviewed. Versions past that are left alone, so a future
onnx release with a real semantic change is never silently aliased.

Where a new version added an attribute that only matters when set, :data:`GUARDED_ALIASES` reuses
the older converter behind a check that the attribute has its neutral value. Where the meaning
changed, separate modules hold real converters: :mod:`.compat_reshape` (``allowzero``),
:mod:`.compat_reduce` (``axes`` as an input), :mod:`.compat_split` (``num_outputs``),
:mod:`.compat_pad` (every Pad version, any rank and axes, ``wrap`` mode), :mod:`.compat_pool`
(MaxPool, AveragePool, LpPool, Conv, ConvTranspose at every version with ``auto_pad`` and
asymmetric pads; GlobalMaxPool, GlobalLpPool), :mod:`.compat_clip` (an omitted or computed
bound), :mod:`.compat_cast` (Cast that follows
``.double()``, CastLike), :mod:`.compat_activations` (Gelu, Mish, Shrink: operators onnx2torch
lacks), :mod:`.compat_flatten` (every axis, 1-D input), :mod:`.compat_sequence` (the sequence
operators that split a tensor and take parts back), :mod:`.compat_legacy` (versions older than
onnx2torch's first, e.g. Slice-1) and :mod:`.compat_names` (submodule names for nodes of dotted
domains such as ``ai.onnx.ml``).
"""

from __future__ import annotations

from collections.abc import Callable

from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import OperationConverterResult

from . import (
    compat_activations,
    compat_cast,
    compat_clip,
    compat_flatten,
    compat_legacy,
    compat_names,
    compat_pad,
    compat_pool,
    compat_reduce,
    compat_reshape,
    compat_sequence,
    compat_split,
    registry,
)

#: op_type -> (newest since_version reviewed, what changed since onnx2torch's newest converter).
ALIASES: dict[str, tuple[int, str]] = {
    "Acos": (22, "bfloat16"),
    "Asin": (22, "bfloat16"),
    "Atan": (22, "bfloat16"),
    "Celu": (28, "float16/double/bfloat16"),
    "Constant": (25, "float8/int4/float4/int2 types"),
    "ConstantOfShape": (25, "bfloat16/float8/int4/float4/int2 types"),
    "Cos": (22, "bfloat16"),
    "DepthToSpace": (28, "a function body; same semantics"),
    "Dropout": (22, "bfloat16/float8 types"),
    "Einsum": (28, "bfloat16"),
    "Elu": (22, "bfloat16"),
    "Equal": (19, "string"),
    "EyeLike": (22, "bfloat16"),
    "GlobalAveragePool": (22, "bfloat16"),
    "GreaterOrEqual": (16, "bfloat16"),
    "HardSigmoid": (22, "bfloat16"),
    "HardSwish": (22, "bfloat16"),
    "Identity": (25, "float8/int4/float4/int2 types"),
    "InstanceNormalization": (22, "bfloat16"),
    "IsInf": (20, "float16/bfloat16/float8"),
    "IsNaN": (20, "float8"),
    "LessOrEqual": (16, "bfloat16"),
    "Mod": (28, "fmod=0 defined for floats as A - floor(A/B)*B, i.e. torch.remainder"),
    "Range": (27, "float16/bfloat16 and stash_type, which only affects those"),
    "RoiAlign": (22, "bfloat16"),
    "Round": (22, "bfloat16"),
    "ScatterND": (18, "max/min reductions, which the older converter rejects"),
    "Selu": (22, "bfloat16"),
    "Shape": (25, "float8/int4/float4/int2 types"),
    "Sin": (22, "bfloat16"),
    "Softplus": (22, "bfloat16"),
    "Softsign": (22, "bfloat16"),
    "Squeeze": (25, "float4/float8e8m0/int2 types"),
    "Tan": (22, "bfloat16"),
    "TopK": (24, "bfloat16"),
    "Transpose": (25, "float8/int4/float4/int2 types"),
    "Unsqueeze": (25, "float8/int4/float4/int2 types"),
}


def _resize_guard(node: OnnxNode) -> None:
    attrs = node.attributes
    if attrs.get("antialias", 0) != 0:
        raise NotImplementedError("Resize with antialias=1 is not supported")
    if "axes" in attrs:
        raise NotImplementedError("Resize with the axes attribute is not supported")
    if attrs.get("keep_aspect_ratio_policy", "stretch") != "stretch":
        raise NotImplementedError("Resize with keep_aspect_ratio_policy is not supported")
    if attrs.get("coordinate_transformation_mode") == "half_pixel_symmetric":
        raise NotImplementedError("Resize with half_pixel_symmetric is not supported")


Guard = Callable[[OnnxNode], None]

#: op_type -> (newest since_version reviewed, check that new attributes are neutral).
GUARDED_ALIASES: dict[str, tuple[int, Guard]] = {
    "Resize": (19, _resize_guard),  # 18: antialias, axes, keep_aspect_ratio; 19: half_pixel_sym.
}

#: modules with real converters, each with ``install() -> list[(op_type, since_version)]``.
_FAMILIES = (
    compat_cast,
    compat_clip,
    compat_reshape,
    compat_reduce,
    compat_split,
    compat_pad,
    compat_pool,
    compat_activations,
    compat_flatten,
    compat_sequence,
    compat_legacy,
    compat_names,
)

_ADDED: list[tuple[str, int, str]] = []


def _guarded(base: registry.Converter, guard: Guard) -> registry.Converter:
    def converter(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
        guard(node)
        return base(node, graph)

    converter.__doc__ = f"{base.__module__} converter behind {guard.__name__}."
    return converter


def _newer_versions(op_type: str, up_to: int) -> list[int]:
    """since_versions above onnx2torch's newest converter, up to the reviewed one, unregistered.

    Gaps *below* the newest registered version are left alone: they may be real changes.
    """
    registered = registry.registered_versions(op_type)
    newest = max(registered, default=up_to)
    return [
        v
        for v in registry.since_versions(op_type)
        if newest < v <= up_to and registry.lookup(op_type, v) is None
    ]


def _install_aliases() -> None:
    for op_type, (up_to, _reason) in ALIASES.items():
        for version in _newer_versions(op_type, up_to):
            base = registry.newest_below(op_type, version)
            if base is not None and registry.register(op_type, version, base):
                _ADDED.append((op_type, version, "alias"))


def _install_guarded() -> None:
    for op_type, (up_to, guard) in GUARDED_ALIASES.items():
        wrapped: registry.Converter | None = None
        for version in _newer_versions(op_type, up_to):
            if wrapped is None:
                base = registry.newest_below(op_type, version)
                if base is None:
                    break
                wrapped = _guarded(base, guard)
            if registry.register(op_type, version, wrapped):
                _ADDED.append((op_type, version, "guarded alias"))


def install() -> None:
    """Register the compatibility converters into onnx2torch; safe to call any number of times.

    Existing registry entries are never replaced, except some of onnx2torch's own, by strict
    supersets: Reshape-14 (which rejects ``allowzero=1``), Cast-9/13 (whose float32 target
    ignores ``.double()``), Clip-11/12/13 (an omitted or computed bound), Flatten (``axis`` 0
    or rank), Pad-2/11/13 (Pad-2's ``value``;
    reflect/edge at any rank) and the pooling and convolution converters (``auto_pad``; they
    delegate to onnx2torch's otherwise).
    """
    for family in _FAMILIES:
        _ADDED.extend((op, version, "converter") for op, version in family.install())
    _install_aliases()
    _install_guarded()


def added_converters() -> list[tuple[str, int, str]]:
    """``(op_type, since_version, kind)`` of every converter :func:`install` added so far."""
    return list(_ADDED)
