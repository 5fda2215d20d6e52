"""Train and export the bundled 8x8-digit classifiers used by onnxinv's examples and benchmarks.

Three fully connected networks in the style of "Inverting Neural Networks" (Linear + SELU hidden
layers, softmax output), a ReLU network and two small CNNs are trained on scikit-learn's bundled
digits data set, exported to ONNX, checked against onnxruntime, and documented in ``README.md``
next to this file. One CNN keeps its BatchNormalization node; the other is written with
``onnx.helper`` in the NHWC layout Keras models get from tf2onnx. Run from anywhere:

    python models/train.py
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import helper, numpy_helper
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

HERE = Path(__file__).resolve().parent
TARGETS = HERE / "targets"
SEED = 0
N_PIXELS = 64
SIDE = 8
N_CLASSES = 10
OPSET = 20  # torch's TorchScript-exporter default, written out so the helper-built graph matches
MAX_BYTES = 1 << 20  # every bundled model stays below 1 MiB
README = HERE / "README.md"
#: README.md holds the digits part (this script) above this line, the Fashion-MNIST part below it
FASHION_MARK = "<!-- The Fashion-MNIST section below is written by models/fashion.py. -->"


@dataclass(frozen=True)
class Spec:
    """One fully connected model to train: its name, layer widths and SGD hyper-parameters."""

    name: str
    widths: tuple[int, ...]
    lr: float
    epochs: int
    batch_size: int = 32
    min_acc: float = 0.95
    act: str = "selu"  # hidden activation: "selu" or "relu"

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (N_PIXELS,)


@dataclass(frozen=True)
class ConvSpec:
    """One small CNN to train: Conv 3x3 (pad 1) [-> BatchNorm] -> ReLU -> MaxPool 2x2 -> dense.

    ``layout="NCHW"`` is exported by torch; ``"NHWC"`` takes a [batch, 8, 8, 1] input and is
    written with ``onnx.helper`` the way tf2onnx writes a Keras model (see :func:`write_nhwc`).
    """

    name: str
    channels: int
    lr: float
    epochs: int
    batchnorm: bool = False
    layout: str = "NCHW"
    batch_size: int = 32
    min_acc: float = 0.95

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (1, SIDE, SIDE) if self.layout == "NCHW" else (SIDE, SIDE, 1)


SPECS: tuple[Spec | ConvSpec, ...] = (
    Spec("digits_1layer", (64, 10), lr=0.1, epochs=60, min_acc=0.93),
    Spec("digits_2layer", (64, 32, 10), lr=0.05, epochs=60),
    Spec("digits_6layer", (64, 512, 256, 128, 64, 32, 10), lr=0.02, epochs=80),
    Spec("digits_relu", (64, 64, 32, 10), lr=0.05, epochs=60, act="relu"),
    ConvSpec("digits_cnn", 8, lr=0.05, epochs=60, batchnorm=True),
    ConvSpec("digits_nhwc", 8, lr=0.05, epochs=60, layout="NHWC"),
)
ACTIVATIONS = {"selu": (nn.SELU, "SELU"), "relu": (nn.ReLU, "ReLU")}


def load_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return a fixed stratified 80/20 split of the digits, pixels scaled to [0, 1]."""
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    x_tr, x_va, y_tr, y_va = train_test_split(x, y, test_size=0.2, stratify=y, random_state=SEED)
    return x_tr, x_va, y_tr, y_va


def build_mlp(widths: tuple[int, ...], act: str = "selu") -> nn.Sequential:
    """Linear layers with ``act`` (SELU, ReLU) between them and a final Softmax over the classes."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(widths) - 2:
            layers.append(ACTIVATIONS[act][0]())
    layers.append(nn.Softmax(dim=-1))
    return nn.Sequential(*layers)


def build_cnn(spec: ConvSpec) -> nn.Sequential:
    """NCHW torch CNN; for an NHWC spec it is trained as it is and rewritten by write_nhwc."""
    c = spec.channels
    return nn.Sequential(
        nn.Conv2d(1, c, 3, padding=1),
        nn.BatchNorm2d(c) if spec.batchnorm else nn.Identity(),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(c * (SIDE // 2) ** 2, N_CLASSES),
        nn.Softmax(dim=-1),
    )


def build(spec: Spec | ConvSpec) -> nn.Sequential:
    return build_cnn(spec) if isinstance(spec, ConvSpec) else build_mlp(spec.widths, spec.act)


def torch_view(x: np.ndarray, spec: Spec | ConvSpec) -> torch.Tensor:
    """Flat [N, 64] pixels as the torch model takes them: [N, 64] or NCHW [N, 1, 8, 8]."""
    shape = (1, SIDE, SIDE) if isinstance(spec, ConvSpec) else (N_PIXELS,)
    return torch.from_numpy(np.ascontiguousarray(x.reshape(len(x), *shape)))


def describe(spec: Spec | ConvSpec) -> str:
    if isinstance(spec, Spec):
        arch = " → ".join(str(w) for w in spec.widths)
        hidden = f" ({ACTIVATIONS[spec.act][1]} hidden, Softmax out)"
        return arch + (hidden if len(spec.widths) > 2 else " (Softmax out)")
    c, flat = spec.channels, spec.channels * (SIDE // 2) ** 2
    conv = f"Conv 3x3 1→{c} (pad 1) → " + ("BatchNorm → " if spec.batchnorm else "")
    conv += "ReLU → MaxPool 2x2"
    if spec.layout == "NHWC":
        return f"to NCHW → {conv} → to NHWC → flatten {flat} → 10 (MatMul + Add, Softmax out)"
    return f"{conv} → flatten {flat} → 10 (Softmax out)"


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def train(spec: Spec | ConvSpec, x: np.ndarray, y: np.ndarray) -> nn.Sequential:
    """SGD with momentum 0.9 on the log-probabilities (cross-entropy on the pre-softmax output)."""
    model = build(spec)
    body = model[:-1]  # everything but the Softmax: logits
    opt = torch.optim.SGD(model.parameters(), lr=spec.lr, momentum=0.9)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=spec.epochs)
    xt, yt = torch_view(x, spec), torch.from_numpy(y)
    gen = torch.Generator().manual_seed(SEED)
    model.train()
    for _ in range(spec.epochs):
        for idx in torch.randperm(len(xt), generator=gen).split(spec.batch_size):
            descend(body, opt, xt[idx], yt[idx])
        sched.step()
    return model.eval()


def descend(body: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    """One optimiser step on the cross-entropy of ``body``'s pre-softmax output for a batch."""
    loss = nn.functional.cross_entropy(body(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()


def write_nhwc(model: nn.Sequential, path: Path) -> None:
    """The trained NCHW CNN as a Keras/tf2onnx-style NHWC graph, written with ``onnx.helper``.

    pixels [batch, 8, 8, 1] -> Transpose(0, 3, 1, 2) -> Conv -> Relu -> MaxPool ->
    Transpose(0, 2, 3, 1) -> Reshape [-1, 128] -> MatMul (constant weight) -> Add (bias) -> Softmax.
    The dense weight's rows are permuted from torch's (channel, row, column) flatten order to the
    NHWC flatten order (row, column, channel).
    """
    conv, dense = model[0], model[5]
    c, side = conv.out_channels, SIDE // 2
    w_conv = conv.weight.detach().numpy()
    b_conv = conv.bias.detach().numpy()
    w = dense.weight.detach().numpy()  # [10, c * 4 * 4], columns in (channel, row, column) order
    w_nhwc = w.reshape(N_CLASSES, c, side, side).transpose(2, 3, 1, 0).reshape(-1, N_CLASSES)
    b = dense.bias.detach().numpy()
    inits = [
        numpy_helper.from_array(np.ascontiguousarray(a, dtype=np.float32), name)
        for name, a in (
            ("conv2d/kernel", w_conv),
            ("conv2d/bias", b_conv),
            ("dense/kernel", w_nhwc),
            ("dense/bias", b),
        )
    ]
    inits.append(numpy_helper.from_array(np.array([-1, c * side * side], np.int64), "flat_shape"))
    make = helper.make_node
    nodes = [
        make(
            "Transpose", ["pixels"], ["conv2d/input_nchw"], name="transpose_in", perm=[0, 3, 1, 2]
        ),
        make(
            "Conv",
            ["conv2d/input_nchw", "conv2d/kernel", "conv2d/bias"],
            ["conv2d/conv"],
            name="conv2d",
            kernel_shape=[3, 3],
            pads=[1, 1, 1, 1],
            strides=[1, 1],
        ),
        make("Relu", ["conv2d/conv"], ["conv2d/relu"], name="conv2d_relu"),
        make(
            "MaxPool",
            ["conv2d/relu"],
            ["max_pooling2d/pool"],
            name="max_pooling2d",
            kernel_shape=[2, 2],
            strides=[2, 2],
        ),
        make(
            "Transpose",
            ["max_pooling2d/pool"],
            ["max_pooling2d/nhwc"],
            name="transpose_out",
            perm=[0, 2, 3, 1],
        ),
        make("Reshape", ["max_pooling2d/nhwc", "flat_shape"], ["flatten/flat"], name="flatten"),
        make("MatMul", ["flatten/flat", "dense/kernel"], ["dense/matmul"], name="dense_matmul"),
        make("Add", ["dense/matmul", "dense/bias"], ["dense/logits"], name="dense_add"),
        make("Softmax", ["dense/logits"], ["probs"], name="softmax", axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "digits_nhwc",
        [helper.make_tensor_value_info("pixels", onnx.TensorProto.FLOAT, ["batch", SIDE, SIDE, 1])],
        [helper.make_tensor_value_info("probs", onnx.TensorProto.FLOAT, ["batch", N_CLASSES])],
        initializer=inits,
    )
    opsets = [helper.make_opsetid("", OPSET)]
    proto = helper.make_model(graph, opset_imports=opsets, producer_name="models/train.py")
    proto.ir_version = helper.find_min_ir_version_for(opsets)
    onnx.save(proto, str(path))


def export(
    model: nn.Sequential, spec: Spec | ConvSpec, path: Path, x_va: np.ndarray, y_va: np.ndarray
) -> dict[str, Any]:
    """Export to ONNX, check it, compare with torch on the validation set and score it.

    Torch's exporter folds an eval-mode BatchNorm into the Conv before it when it folds constants,
    so a spec with ``batchnorm`` is exported without constant folding to keep the node.
    """
    x_onnx = np.ascontiguousarray(x_va.reshape(len(x_va), *spec.input_shape))
    if isinstance(spec, ConvSpec) and spec.layout == "NHWC":
        write_nhwc(model, path)
    else:
        with warnings.catch_warnings():  # the legacy (TorchScript) exporter is requested on purpose
            warnings.filterwarnings(
                "ignore", "You are using the legacy TorchScript", DeprecationWarning
            )
            torch.onnx.export(
                model,
                (torch.from_numpy(x_onnx[:1]),),
                str(path),
                dynamo=False,
                opset_version=OPSET,
                do_constant_folding=not getattr(spec, "batchnorm", False),
                input_names=["pixels"],
                output_names=["probs"],
                dynamic_axes={"pixels": {0: "batch"}, "probs": {0: "batch"}},
            )
    with torch.no_grad():
        ref = model(torch_view(x_va, spec)).numpy()
    info = check_onnx(path, x_onnx, ref, tol=1e-5)
    if getattr(spec, "batchnorm", False) and "BatchNormalization" not in info["ops"]:
        raise RuntimeError(f"{path.name}: the exporter fused the BatchNormalization node")
    info["acc"] = float((info.pop("probs").argmax(axis=1) == y_va).mean())
    return info


def ort_probs(path: Path, x: np.ndarray) -> np.ndarray:
    """The ``probs`` onnxruntime computes for ``pixels`` ``x`` (in the model's input layout)."""
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(["probs"], {"pixels": x})[0]


def check_onnx(path: Path, x: np.ndarray, ref: np.ndarray, tol: float) -> dict[str, Any]:
    """``onnx.checker``, then onnxruntime's ``probs`` for ``x`` against torch's ``ref``.

    Returns the graph's operators (in node order), its default-domain opset, the largest
    absolute difference from ``ref`` and onnxruntime's ``probs``.
    """
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    ops = [node.op_type for node in proto.graph.node]
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    probs = ort_probs(path, x)
    diff = float(np.abs(probs - ref).max())
    if diff >= tol:
        raise RuntimeError(f"{path.name}: onnxruntime differs from torch by {diff:.2e}")
    if not np.allclose(probs.sum(axis=1), 1.0, atol=1e-5):
        raise RuntimeError(f"{path.name}: output rows do not sum to 1")
    return {"ops": ops, "opset": opset, "diff": diff, "probs": probs}


def write_targets() -> None:
    """Example targets for ``onnxinv invert`` (all probabilities strictly positive)."""
    TARGETS.mkdir(exist_ok=True)
    rest = 0.01 / 8
    mix = [0.495 if k in (1, 7) else rest for k in range(N_CLASSES)]
    uniform = [0.1] * N_CLASSES
    for dist in (mix, uniform):
        if abs(sum(dist) - 1.0) >= 1e-9 or min(dist) <= 0:
            raise ValueError(f"not a strictly positive distribution: {dist}")
    targets = {
        "digit3.json": {"class": 3, "confidence": 0.9},
        "mix_1_7.json": {"distribution": mix},
        "uniform.json": {"distribution": uniform},
    }
    for name, body in targets.items():
        (TARGETS / name).write_text(json.dumps(body, indent=2) + "\n")


def write_readme(rows: list[dict[str, Any]], n_train: int, n_val: int) -> None:
    table = "\n".join(
        f"| `{r['file']}` | {r['arch']} | `{r['input']}` | {r['ops']} | {r['params']:,} "
        f"| {r['acc']:.2%} | {r['opset']} |"
        for r in rows
    )
    text = f"""# Bundled models

Small classifiers for scikit-learn's 8x8 handwritten digits. Three are fully connected networks
in the style of the paper "Inverting Neural Networks" (every hidden layer is Linear followed by
SELU; the output is a Softmax); the others cover operators and layouts real exports contain: a
ReLU network, a CNN with a BatchNormalization node, and a CNN in the NHWC layout Keras models get
from tf2onnx. They are tiny, train in seconds on a CPU and are the default test and benchmark
subjects for `onnxinv`.

| Model file | Architecture | Input `pixels` | Operators | Parameters | Validation accuracy | Opset |
|---|---|---|---|---|---|---|
{table}

- **Input** `pixels`: float32, each pixel in [0, 1] (scikit-learn's 0..16 intensities divided by
  16). The fully connected models take the 8x8 image flattened row-major, `[batch, 64]`;
  `digits_cnn` takes it as NCHW `[batch, 1, 8, 8]` and `digits_nhwc` as NHWC `[batch, 8, 8, 1]`
  (with one channel all three hold the same numbers in the same order: a reshape converts them).
- **Output** `probs`: float32 `[batch, 10]`, class probabilities for digits 0-9 from a final
  `Softmax(axis=-1)` node.
- **Data**: `sklearn.datasets.load_digits`, stratified 80/20 split with `random_state=0`
  ({n_train} training / {n_val} validation images). Trained with SGD (momentum 0.9, cosine
  learning-rate decay) on the cross-entropy of the pre-softmax output; `torch.manual_seed(0)`
  before each model.
- `digits_val.npz`: the validation split (`x`: float32 `[{n_val}, 64]` pixels in [0, 1],
  `y`: int64 labels), used by the benchmark to compare inverted inputs with real digits.

## The ReLU network and the CNNs

- `digits_relu.onnx`: like the SELU networks with ReLU hidden layers (`Gemm`, `Relu`,
  `Softmax`). A ReLU zero has a whole half-line of preimages and no slope, so it exercises
  the set-valued inverse rules.
- `digits_cnn.onnx`: `Conv` (8 filters 3x3, pad 1) → `BatchNormalization` → `Relu` →
  `MaxPool` (2x2, stride 2) → `Flatten` → `Gemm` → `Softmax`, exported by torch's TorchScript
  exporter. With constant folding (its default) that exporter folds an eval-mode BatchNorm into
  the Conv before it, so this model is exported with `do_constant_folding=False`, which keeps
  `BatchNormalization` a separate node holding the trained scale, shift and running statistics
  (`train.py` checks that the node is there).
- `digits_nhwc.onnx`: the same kind of CNN without BatchNorm, trained in torch and then written
  with `onnx.helper` the way tf2onnx writes a Keras model: `Transpose(perm 0,3,1,2)` to NCHW →
  `Conv` → `Relu` → `MaxPool` → `Transpose(perm 0,2,3,1)` back to NHWC → `Reshape` to
  `[-1, 128]` → `MatMul` with a constant `[128, 10]` weight → `Add` (bias) → `Softmax`. The dense
  weight's rows are permuted from torch's (channel, row, column) flatten order to NHWC's (row,
  column, channel), so the graph computes what the torch model computes (checked on the
  validation set like the exported models).

## Why the 6-layer network is a wide funnel

SELU's output is bounded below (> -1.758), so a layer can reach every pre-activation only if
the layer below has enough units for its weight columns to *positively span* that space, which
for random-like weights takes roughly twice as many. Narrow stacks (64-48-48-32-32-16-10 and
64-56-48-40-32-24-10 were tried) have logit ranges that exclude the bundled targets: LM and
6,000-step Adam runs from 768 starts all plateau at errors of 0.004-0.03. The 64-512-256-128-
64-32 funnel halves at every layer, like the paper's MNIST networks, and its range contains
`digit3` and `uniform` without bounds. Its first layer expands (64 -> 512), so it is not onto:
the exact backward pass covers only the layers above it and LM solves the rest (see
`onnxinv inspect models/digits_6layer.onnx`). With the box [0, 1], `digit3` and `mix_1_7`
remain outside this network's range: onnxinv reports them as unreachable.

## Example targets (`targets/`)

- `digit3.json`: class 3 with confidence 0.9.
- `mix_1_7.json`: a 50/50 mix of classes 1 and 7 (0.495 each; the remaining 0.01 is spread
  evenly over the other eight classes so that every probability is strictly positive).
- `uniform.json`: the uniform distribution (0.1 for every class).

## Regenerating

```bash
python models/train.py
```

This retrains all {len(rows)} models (a minute or two on two idle CPU cores), re-exports the torch
models with `torch.onnx.export(..., dynamo=False, opset_version={OPSET})` and writes
`digits_nhwc.onnx` with `onnx.helper`, checks every file with `onnx.checker` and onnxruntime (max
abs difference from torch < 1e-5, validation accuracy at least each model's minimum, size below
1 MiB), and rewrites `digits_val.npz`, the example targets and this README down to the
Fashion-MNIST section (generated by `train.py`; that section by `fashion.py`: edit the scripts,
not this file). Runs are seeded; on the same machine and library versions the outputs are
byte-identical.
"""
    write_readme_part(text, fashion=False)


def write_readme_part(text: str, *, fashion: bool) -> None:
    """Rewrite one part of README.md (digits above ``FASHION_MARK``, Fashion-MNIST below it)."""
    old = README.read_text() if README.exists() else ""
    digits, _, rest = old.partition(FASHION_MARK)
    digits, rest = (digits, text) if fashion else (text, rest)
    parts = [digits.strip("\n")]
    if rest.strip():
        parts += [FASHION_MARK, rest.strip("\n")]
    README.write_text("\n\n".join(parts) + "\n")


def report(
    name: str, info: dict[str, Any], size: int, seconds: float, min_acc: float, max_bytes: float
) -> None:
    """Print a model's facts; fail when its accuracy is below ``min_acc`` or its file too big."""
    print(
        f"{name}: val acc {info['acc']:.4f}  opset {info['opset']}  "
        f"max|ort-torch| {info['diff']:.1e}  {size} B  "
        f"{seconds:.1f}s\n  ops: {' '.join(info['ops'])}"
    )
    if info["acc"] < min_acc:
        raise RuntimeError(f"{name}: accuracy {info['acc']:.4f} < {min_acc}")
    if size >= max_bytes:
        raise RuntimeError(f"{name}: {size} B is not below {max_bytes} B")


def main() -> None:
    torch.manual_seed(SEED)
    np.random.seed(SEED)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    x_tr, x_va, y_tr, y_va = load_split()
    np.savez_compressed(HERE / "digits_val.npz", x=x_va, y=y_va)

    rows: list[dict[str, Any]] = []
    for spec in SPECS:
        torch.manual_seed(SEED)
        t0 = time.perf_counter()
        model = train(spec, x_tr, y_tr)
        path = HERE / f"{spec.name}.onnx"
        info = export(model, spec, path, x_va, y_va)
        size = path.stat().st_size
        report(spec.name, info, size, time.perf_counter() - t0, spec.min_acc, MAX_BYTES)
        rows.append(
            {
                "file": path.name,
                "arch": describe(spec),
                "input": "[batch, " + ", ".join(str(d) for d in spec.input_shape) + "]",
                "ops": ", ".join(dict.fromkeys(info["ops"])),
                "params": n_params(model),
                "acc": info["acc"],
                "opset": info["opset"],
            }
        )

    write_targets()
    write_readme(rows, len(x_tr), len(x_va))


if __name__ == "__main__":
    main()
