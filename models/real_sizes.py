"""Real-size models for the "real sizes" benchmark: the shapes deployed networks have.

Five architectures at the sizes people ship, with random seeded weights (nothing is downloaded),
exported to ONNX, and one copy rewritten the way paddle2onnx writes weights:

| name | what | input | output |
|---|---|---|---|
| ``mobilenet_v3`` | torchvision ``mobilenet_v3_small`` + Softmax | [N, 3, 224, 224] | [N, 1000] |
| ``resnet18`` | torchvision ``resnet18`` + Softmax | [N, 3, 224, 224] | [N, 1000] |
| ``sequence`` | CRNN-like text recognizer, per-step Softmax | [N, 3, 32, 128] | [N, 32, 1000] |
| ``dense`` | small U-Net, Sigmoid per pixel | [N, 3, 64, 256] | [N, 1, 64, 256] |
| ``vit_dynamo`` | ViT (4 layers, hidden 64), ``dynamo=True`` export | [1, 1, 28, 28] | [1, 10] |
| ``sequence_constants`` | ``sequence`` with every initializer a ``Constant`` node | as ``sequence`` | |

All but ``vit_dynamo`` are exported by the TorchScript exporter (``dynamo=False``, opset
:data:`OPSET`, symbolic batch axis); ``vit_dynamo`` by ``torch.onnx.export(model,
torch.rand(1, 1, 28, 28), dynamo=True)``: the default exporter, batch fixed at 1.

Random weights give outputs no trained network has (BatchNorm layers that do not normalise,
softmaxes that are nearly uniform), so two things are calibrated, deterministically:

- BatchNorm statistics are re-estimated on crops of scikit-learn's two sample photographs;
- the last layer is scaled so the pre-Softmax logits on the real input have standard deviation
  :data:`LOGIT_STD` across classes (pre-Sigmoid: :data:`SIGMOID_STD` across pixels, centred),
  so the target is a peaked distribution a random input does not already meet.

The target of each model is its own output on a real photograph (``china.jpg`` or
``flower.jpg``, cropped and resized to the input, in [0, 1]), so it is reachable:
``{"distribution": ...}`` for the classifiers (onnxruntime's output renormalised in float64,
entries floored at :data:`FLOOR`), ``{"values": ...}`` (one sample's output, nested) for the
sequence and dense models, whose outputs are not vectors (a distribution target is refused for
them: onnxinv's ``Target.resolve`` asks for a vector output).

Files are cached: a model is rebuilt only when its file is missing or its build settings
(stored as JSON in the ONNX ``metadata_props`` under :data:`META_KEY`) differ.

    python models/real_sizes.py --out DIR [--models NAME ...] [--small]

``--small`` writes tiny versions (``NAME_small.onnx``, seconds to build) for tests.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))  # (models/ is not a package)
from fashion import Block  # noqa: E402 - the ViT-tiny's encoder layer, shared

BUILD_VERSION = 2  # bump when a builder changes what it writes
META_KEY = "onnxinv.real_sizes"
OPSET = 17  # the TorchScript exports
SEED = 0
LOGIT_STD = 3.0  # pre-Softmax spread on the real input, across classes
SIGMOID_STD = 2.0  # pre-Sigmoid spread on the real input, across pixels
FLOOR = 1e-12  # smallest probability written into a distribution target
CALIBRATION_CROPS = 8  # crops of the photographs that set the BatchNorm statistics
TOLERANCE = 1e-4  # largest |onnxruntime - torch| accepted after export
MODELS = (
    "mobilenet_v3",
    "resnet18",
    "sequence",
    "dense",
    "vit_dynamo",
    "sequence_constants",
    "vit_base",
)
CLASSIFIERS = ("mobilenet_v3", "resnet18", "vit_dynamo", "vit_base")


# ---------------------------------------------------------------------------------------------
# Build settings: one frozen dataclass per model, full size and --small


@dataclass(frozen=True)
class ImageSpec:
    """An input image [channels, height, width] cut from ``photo``."""

    channels: int
    height: int
    width: int
    photo: str

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, self.height, self.width)


@dataclass(frozen=True)
class MobileNetSpec:
    image: ImageSpec
    classes: int = 1000
    width_mult: float = 1.0


@dataclass(frozen=True)
class ResNetSpec:
    image: ImageSpec
    classes: int = 1000
    layers: tuple[int, ...] = (2, 2, 2, 2)  # (2, 2, 2, 2) is resnet18


@dataclass(frozen=True)
class SequenceSpec:
    image: ImageSpec  # width / 4 steps
    classes: int = 1000
    hidden: int = 256


@dataclass(frozen=True)
class DenseSpec:
    image: ImageSpec  # height and width divisible by 4
    base: int = 16


@dataclass(frozen=True)
class ViTSpec:
    image: ImageSpec
    patch: int = 7
    dim: int = 64
    depth: int = 4
    heads: int = 4
    mlp: int = 128
    classes: int = 10


Spec = MobileNetSpec | ResNetSpec | SequenceSpec | DenseSpec | ViTSpec

FULL: dict[str, Spec] = {
    "mobilenet_v3": MobileNetSpec(ImageSpec(3, 224, 224, "china.jpg")),
    "resnet18": ResNetSpec(ImageSpec(3, 224, 224, "china.jpg")),
    "sequence": SequenceSpec(ImageSpec(3, 32, 128, "flower.jpg")),
    "dense": DenseSpec(ImageSpec(3, 64, 256, "china.jpg")),
    "vit_dynamo": ViTSpec(ImageSpec(1, 28, 28, "flower.jpg")),
    # DINOv3-Base-sized (ViT-B: hidden 768, 12 layers, 12 heads, MLP 3072; ~85M weights), at
    # the paper's 28×28 with 7×7 patches.
    "vit_base": ViTSpec(ImageSpec(1, 28, 28, "flower.jpg"), dim=768, depth=12, heads=12, mlp=3072),
}
SMALL: dict[str, Spec] = {
    "mobilenet_v3": MobileNetSpec(ImageSpec(3, 32, 32, "china.jpg"), classes=10, width_mult=0.25),
    "resnet18": ResNetSpec(ImageSpec(3, 32, 32, "china.jpg"), classes=10, layers=(1, 1, 1, 1)),
    "sequence": SequenceSpec(ImageSpec(3, 16, 32, "flower.jpg"), classes=12, hidden=16),
    "dense": DenseSpec(ImageSpec(3, 8, 16, "china.jpg"), base=4),
    "vit_dynamo": ViTSpec(ImageSpec(1, 28, 28, "flower.jpg"), dim=16, depth=1, heads=2, mlp=32),
    "vit_base": ViTSpec(ImageSpec(1, 28, 28, "flower.jpg"), dim=16, depth=2, heads=2, mlp=32),
}


def spec_for(name: str, small: bool = False) -> Spec:
    """The build settings of model ``name`` (``sequence_constants``: those of ``sequence``)."""
    base = "sequence" if name == "sequence_constants" else name
    table = SMALL if small else FULL
    if base not in table:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    return table[base]


def settings_of(name: str, spec: Spec) -> dict[str, Any]:
    """What a cached file must have been built with: the builder version, model and settings."""
    return {
        "version": BUILD_VERSION,
        "model": name,
        "spec": type(spec).__name__,
        **asdict(spec),
        "seed": SEED,
        "opset": OPSET,
        "logit_std": LOGIT_STD,
        "sigmoid_std": SIGMOID_STD,
    }


def settings_hash(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# Real inputs: scikit-learn's sample photographs


def photo_crop(photo: str, image: ImageSpec, box: tuple[float, float, float] | None = None):
    """``photo`` cropped to ``image``'s aspect ratio and resized to it: float32 [C, H, W] in
    [0, 1] (grayscale for one channel). ``box`` = (scale, x, y) in [0, 1] picks a smaller
    crop (for calibration); default the largest centred crop."""
    from PIL import Image
    from sklearn.datasets import load_sample_image

    pic = Image.fromarray(load_sample_image(photo))
    if image.channels == 1:
        pic = pic.convert("L")
    pw, ph = pic.size
    aspect = image.width / image.height
    cw, ch = (pw, pw / aspect) if pw / ph < aspect else (ph * aspect, ph)
    scale, fx, fy = box or (1.0, 0.5, 0.5)
    cw, ch = cw * scale, ch * scale
    left, top = fx * (pw - cw), fy * (ph - ch)
    crop = pic.crop((round(left), round(top), round(left + cw), round(top + ch)))
    crop = crop.resize((image.width, image.height), Image.Resampling.BILINEAR)
    x = np.asarray(crop, dtype=np.float32) / 255.0
    x = x[None] if image.channels == 1 else x.transpose(2, 0, 1)
    return np.ascontiguousarray(x)


def real_input(image: ImageSpec) -> np.ndarray:
    """The real input: [1, C, H, W] float32 in [0, 1]."""
    return photo_crop(image.photo, image)[None]


def calibration_batch(image: ImageSpec, n: int = CALIBRATION_CROPS) -> np.ndarray:
    """``n`` random crops (seeded) alternating between the two sample photographs."""
    rng = np.random.default_rng(SEED)
    crops = []
    for i in range(n):
        photo = ("china.jpg", "flower.jpg")[i % 2]
        box = (float(rng.uniform(0.4, 1.0)), float(rng.uniform()), float(rng.uniform()))
        crops.append(photo_crop(photo, image, box))
    return np.stack(crops)


# ---------------------------------------------------------------------------------------------
# The torch models


def conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
    )


class Softmaxed(nn.Module):
    """``softmax(net(x), -1)``; ``head`` is the layer whose scale :func:`calibrate` sets."""

    def __init__(self, net: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.head = head

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(x), dim=-1)


class Recognizer(nn.Module):
    """CRNN-like: three conv blocks (H/8, W/4), the height collapsed by a [H/8, 1] conv, a
    kernel-3 conv1d over the steps, a Linear per step, Softmax per step: [N, W/4, classes]."""

    def __init__(self, spec: SequenceSpec) -> None:
        super().__init__()
        c, h = spec.hidden, spec.image.height
        self.features = nn.Sequential(
            conv_bn_relu(spec.image.channels, c // 4), nn.MaxPool2d(2),
            conv_bn_relu(c // 4, c // 2), nn.MaxPool2d(2),
            conv_bn_relu(c // 2, c), nn.MaxPool2d((2, 1)),
        )  # fmt: skip
        self.collapse = nn.Conv2d(c, c, (h // 8, 1))
        self.context = nn.Conv1d(c, c, 3, padding=1)
        self.head = nn.Linear(c, spec.classes)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.relu(self.collapse(self.features(x))).flatten(2)  # [N, c, steps]
        z = torch.relu(self.context(z)).transpose(1, 2)  # [N, steps, c]
        return self.head(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(x), dim=-1)


class UNet(nn.Module):
    """Two stride-2 conv downsamplings, two ConvTranspose upsamplings with skip connections, a
    1x1 conv to one channel and a Sigmoid: [N, 1, H, W]."""

    def __init__(self, spec: DenseSpec) -> None:
        super().__init__()
        b = spec.base
        self.enc1 = conv_bn_relu(spec.image.channels, b)
        self.enc2 = conv_bn_relu(b, 2 * b, stride=2)
        self.enc3 = nn.Sequential(conv_bn_relu(2 * b, 4 * b, stride=2), conv_bn_relu(4 * b, 4 * b))
        self.up2 = nn.ConvTranspose2d(4 * b, 2 * b, 2, stride=2)
        self.dec2 = conv_bn_relu(4 * b, 2 * b)
        self.up1 = nn.ConvTranspose2d(2 * b, b, 2, stride=2)
        self.dec1 = conv_bn_relu(2 * b, b)
        self.head = nn.Conv2d(b, 1, 1)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        d2 = self.dec2(torch.cat([self.up2(self.enc3(e2)), e2], dim=1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], dim=1))
        return self.head(d1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(x))


class ViT(nn.Module):
    """Patch embedding (strided Conv), class token, position embedding, encoder, Softmax head."""

    def __init__(self, spec: ViTSpec) -> None:
        super().__init__()
        tokens = (spec.image.height // spec.patch) * (spec.image.width // spec.patch)
        self.embed = nn.Conv2d(spec.image.channels, spec.dim, spec.patch, stride=spec.patch)
        self.cls = nn.Parameter(torch.randn(1, 1, spec.dim) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, tokens + 1, spec.dim) * 0.02)
        self.blocks = nn.Sequential(
            *(Block(spec.dim, spec.heads, spec.mlp) for _ in range(spec.depth))
        )
        self.norm = nn.LayerNorm(spec.dim)
        self.head = nn.Linear(spec.dim, spec.classes)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        patches = self.embed(x).flatten(2).transpose(1, 2)  # [N, tokens, dim]
        cls = self.cls.expand(patches.shape[0], -1, -1)
        z = self.blocks(torch.cat([cls, patches], dim=1) + self.pos)
        return self.head(self.norm(z)[:, 0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(x), dim=-1)


def torch_model(spec: Spec) -> nn.Module:
    """The seeded, uncalibrated torch module of ``spec``."""
    import torchvision

    torch.manual_seed(SEED)
    if isinstance(spec, MobileNetSpec):
        net = torchvision.models.mobilenet_v3_small(
            weights=None, num_classes=spec.classes, width_mult=spec.width_mult
        )
        return Softmaxed(net, net.classifier[-1])
    if isinstance(spec, ResNetSpec):
        if spec.layers == (2, 2, 2, 2):
            net = torchvision.models.resnet18(weights=None, num_classes=spec.classes)
        else:
            block = torchvision.models.resnet.BasicBlock
            net = torchvision.models.resnet.ResNet(block, list(spec.layers), spec.classes)
        return Softmaxed(net, net.fc)
    if isinstance(spec, SequenceSpec):
        return Recognizer(spec)
    if isinstance(spec, DenseSpec):
        return UNet(spec)
    return ViT(spec)


@torch.no_grad()
def calibrate(model: nn.Module, spec: Spec) -> nn.Module:
    """BatchNorm statistics from crops of the photographs, then the last layer scaled (and for
    the Sigmoid model shifted) so the real input's pre-activation output has the set spread."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if bns:
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None  # a cumulative average over the batch
        model.train()
        model.logits(torch.from_numpy(calibration_batch(spec.image)))
    model.eval()
    z = model.logits(torch.from_numpy(real_input(spec.image))).double()
    head = model.head
    if isinstance(spec, DenseSpec):
        head.bias -= float(z.mean())
        scale = SIGMOID_STD / float(z.std())
    else:
        scale = LOGIT_STD / float(z.std(dim=-1).mean())
    head.weight *= scale
    head.bias *= scale
    return model


# ---------------------------------------------------------------------------------------------
# Export, the cache and the targets


@dataclass
class Built:
    """One model on disk: ``path``, its ``target`` JSON, and its real input."""

    name: str
    path: Path
    target: Path
    image: ImageSpec
    settings: dict[str, Any]
    rebuilt: bool
    seconds: float
    info: dict[str, Any] = field(default_factory=dict)

    def real_input(self) -> np.ndarray:
        """The photograph the target was computed on: [1, C, H, W] float32 in [0, 1]."""
        return real_input(self.image)


def file_stem(name: str, small: bool) -> str:
    return f"{name}_small" if small else name


def cached_settings(path: Path) -> dict[str, Any] | None:
    """The build settings stored in ``path``'s metadata (None: no file, or none stored)."""
    if not path.exists():
        return None
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - an unreadable file is rebuilt
        return None
    for prop in proto.metadata_props:
        if prop.key == META_KEY:
            return json.loads(prop.value)
    return None


def stamp(proto: onnx.ModelProto, settings: dict[str, Any]) -> None:
    """Record the build settings (and their hash) in the model's ``metadata_props``."""
    keep = [p for p in proto.metadata_props if p.key != META_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    value = json.dumps({**settings, "hash": settings_hash(settings)}, sort_keys=True)
    proto.metadata_props.add(key=META_KEY, value=value)


def is_current(path: Path, settings: dict[str, Any]) -> bool:
    stored = cached_settings(path)
    return stored is not None and stored.get("hash") == settings_hash(settings)


def export(
    model: nn.Module, spec: Spec, path: Path, dynamo: bool, settings: dict[str, Any]
) -> None:
    """TorchScript export with a symbolic batch axis, or the default (dynamo) exporter with the
    fixed example batch of 1; one file either way, without the dynamo exporter's stack traces."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".export.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            torch.onnx.export(model, (torch.rand(1, *spec.image.shape),), str(tmp), dynamo=True,
                              verbose=False)  # fmt: skip
        else:
            torch.onnx.export(
                model,
                (torch.rand(1, *spec.image.shape),),
                str(tmp),
                dynamo=False,
                opset_version=OPSET,
                input_names=["input"],
                output_names=["output"],
                dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
            )
    proto = onnx.load(str(tmp))  # (external data, if any, is read in)
    for node in proto.graph.node:
        keep = [p for p in node.metadata_props if not p.key.endswith("stack_trace")]
        del node.metadata_props[:]
        node.metadata_props.extend(keep)
    stamp(proto, settings)
    onnx.save(proto, str(path), save_as_external_data=False)
    for leftover in path.parent.glob(tmp.name + "*"):
        leftover.unlink()


def session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def ort_output(path: Path, x: np.ndarray) -> np.ndarray:
    """onnxruntime's first output for the model's only input ``x``."""
    sess = session(path)
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def target_of(name: str, y: np.ndarray, batch_axis: bool) -> dict[str, Any]:
    """The target JSON for the model's own output ``y`` on the real input (batch of 1)."""
    if name in CLASSIFIERS:
        p = np.asarray(y, dtype=np.float64).ravel()
        p = p / p.sum()
        p = np.maximum(p, FLOOR)
        return {"distribution": (p / p.sum()).tolist()}
    one = y[0] if batch_axis else y
    return {"values": np.asarray(one, dtype=np.float64).tolist()}


def has_batch_axis(path: Path) -> bool:
    dim = session(path).get_inputs()[0].shape[0]
    return not isinstance(dim, int)


def write_target(name: str, path: Path, target: Path, x: np.ndarray) -> dict[str, Any]:
    """Write ``target`` (when its content changed): the model's own output on ``x``."""
    spec = target_of(name, ort_output(path, x), has_batch_axis(path))
    text = json.dumps(spec)
    if not target.exists() or target.read_text() != text:
        target.write_text(text)
    return spec


def n_weights(proto: onnx.ModelProto) -> int:
    """Numbers stored in the graph: initializers and Constant node values."""
    total = sum(int(np.prod(t.dims)) for t in proto.graph.initializer)
    for node in proto.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    total += int(np.prod(attr.t.dims))
    return total


def describe(path: Path) -> dict[str, Any]:
    """Input and output shapes (symbolic axes by name), weights and operators of a file."""
    proto = onnx.load(str(path))
    sess = session(path)
    ops = list(dict.fromkeys(n.op_type for n in proto.graph.node))
    return {
        "input": list(sess.get_inputs()[0].shape),
        "output": list(sess.get_outputs()[0].shape),
        "params": n_weights(proto),
        "ops": ops,
        "opset": next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")),
        "bytes": path.stat().st_size,
    }


def build(name: str, out: str | Path, small: bool = False, force: bool = False) -> Built:
    """Model ``name`` in folder ``out`` (built, or the cached file when its settings match),
    its target JSON beside it (``STEM.target.json``) and the real input (``STEM.input.npy``)."""
    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    spec = spec_for(name, small)
    stem = file_stem(name, small)
    path = out / f"{stem}.onnx"
    settings = settings_of(name, spec)
    rebuilt = False
    if name == "sequence_constants":
        src = build("sequence", out, small, force)
        settings = {**settings, "source_hash": settings_hash(src.settings)}
        if force or not is_current(path, settings):
            constant_copy(src.path, path, settings)
            rebuilt = True
    elif force or not is_current(path, settings):
        model = calibrate(torch_model(spec), spec)
        export(model, spec, path, name == "vit_dynamo", settings)
        x = real_input(spec.image)
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).numpy()
        diff = float(np.abs(ort_output(path, x) - ref).max())
        if not diff < TOLERANCE:
            raise RuntimeError(f"{path.name}: onnxruntime differs from torch by {diff:.2e}")
        rebuilt = True
    x = real_input(spec.image)
    np.save(out / f"{stem}.input.npy", x)
    target = out / f"{stem}.target.json"
    write_target(name, path, target, x)
    return Built(name, path, target, spec.image, settings, rebuilt, time.perf_counter() - t0)


# ---------------------------------------------------------------------------------------------
# paddle2onnx-style weights


def constant_copy(src: str | Path, dst: str | Path, settings: dict[str, Any] | None = None) -> Path:
    """Write ``src`` to ``dst`` with every initializer turned into a ``Constant`` node (the
    way paddle2onnx writes weights), at the start of the graph; outputs are unchanged."""
    proto = onnx.load(str(src))
    graph = proto.graph
    names = {t.name for t in graph.initializer} | {t.values.name for t in graph.sparse_initializer}
    consts = [
        onnx.helper.make_node("Constant", [], [t.name], name=f"p2o.Constant.{i}", value=t)
        for i, t in enumerate(graph.initializer)
    ]
    consts += [
        onnx.helper.make_node(
            "Constant", [], [t.values.name], name=f"p2o.SparseConstant.{i}", sparse_value=t
        )  # fmt: skip
        for i, t in enumerate(graph.sparse_initializer)
    ]
    inputs = [i for i in graph.input if i.name not in names]  # (IR < 4 lists weights as inputs)
    nodes = consts + list(graph.node)
    del graph.input[:]
    graph.input.extend(inputs)
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.initializer[:]
    del graph.sparse_initializer[:]
    if settings is not None:
        stamp(proto, settings)
    onnx.checker.check_model(proto)
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(dst), save_as_external_data=False)
    return Path(dst)


# ---------------------------------------------------------------------------------------------
# Command line


def build_all(
    names: Sequence[str], out: Path, small: bool, log: Callable[[str], None] = print
) -> list[Built]:
    built = []
    for name in names:
        b = build(name, out, small)
        b.info = describe(b.path)
        log(
            f"{b.path.name:<28} {'built' if b.rebuilt else 'cached':<6} {b.seconds:6.1f} s  "
            f"input {b.info['input']}  output {b.info['output']}  "
            f"{b.info['params']:,} weights  {b.info['bytes'] / 2**20:.1f} MB"
        )
        built.append(b)
    return built


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for the models and targets")
    ap.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    ap.add_argument("--small", action="store_true", help="tiny versions (NAME_small.onnx)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    build_all(args.models, args.out, args.small)
    return 0


if __name__ == "__main__":
    sys.exit(main())
