"""Train and export the bundled 8x8-digit classifiers used by onnxinv's examples and benchmarks.

Three fully connected networks in the style of "Inverting Neural Networks" (Linear + SELU hidden
layers, softmax output) are trained on scikit-learn's bundled digits data set, exported to ONNX,
checked against onnxruntime, and documented in ``README.md`` next to this file. Run from anywhere:

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
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

HERE = Path(__file__).resolve().parent
TARGETS = HERE / "targets"
SEED = 0
N_PIXELS = 64
N_CLASSES = 10


@dataclass(frozen=True)
class Spec:
    """One model to train: its name, layer widths and SGD hyper-parameters."""

    name: str
    widths: tuple[int, ...]
    lr: float
    epochs: int
    batch_size: int = 32
    min_acc: float = 0.95


SPECS = (
    Spec("digits_1layer", (64, 10), lr=0.1, epochs=60, min_acc=0.93),
    Spec("digits_2layer", (64, 32, 10), lr=0.05, epochs=60),
    Spec("digits_6layer", (64, 512, 256, 128, 64, 32, 10), lr=0.02, epochs=80),
)


def load_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return a fixed stratified 80/20 split of the digits, pixels scaled to [0, 1]."""
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    x_tr, x_va, y_tr, y_va = train_test_split(x, y, test_size=0.2, stratify=y, random_state=SEED)
    return x_tr, x_va, y_tr, y_va


def build(widths: tuple[int, ...]) -> nn.Sequential:
    """Linear layers with SELU between them and a final Softmax over the classes."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(widths) - 2:
            layers.append(nn.SELU())
    layers.append(nn.Softmax(dim=-1))
    return nn.Sequential(*layers)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def train(spec: Spec, x: np.ndarray, y: np.ndarray) -> nn.Sequential:
    """SGD with momentum 0.9 on the log-probabilities (cross-entropy on the pre-softmax output)."""
    model = build(spec.widths)
    body = model[:-1]  # everything but the Softmax: logits
    opt = torch.optim.SGD(model.parameters(), lr=spec.lr, momentum=0.9)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=spec.epochs)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    gen = torch.Generator().manual_seed(SEED)
    model.train()
    for _ in range(spec.epochs):
        perm = torch.randperm(len(xt), generator=gen)
        for start in range(0, len(xt), spec.batch_size):
            idx = perm[start : start + spec.batch_size]
            loss = nn.functional.cross_entropy(body(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    return model.eval()


def export(model: nn.Sequential, path: Path, x_va: np.ndarray, y_va: np.ndarray) -> dict[str, Any]:
    """Export to ONNX, check it, compare with torch on the validation set and score it."""
    example = torch.from_numpy(x_va[:1])
    with warnings.catch_warnings():  # the legacy (TorchScript) exporter is requested on purpose
        warnings.filterwarnings(
            "ignore", "You are using the legacy TorchScript", DeprecationWarning
        )
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=False,
            input_names=["pixels"],
            output_names=["probs"],
            dynamic_axes={"pixels": {0: "batch"}, "probs": {0: "batch"}},
        )
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    ops = [node.op_type for node in proto.graph.node]
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    probs = sess.run(None, {"pixels": x_va})[0]
    with torch.no_grad():
        ref = model(torch.from_numpy(x_va)).numpy()
    diff = float(np.abs(probs - ref).max())
    if diff >= 1e-5:
        raise RuntimeError(f"{path.name}: onnxruntime differs from torch by {diff:.2e}")
    if not np.allclose(probs.sum(axis=1), 1.0, atol=1e-5):
        raise RuntimeError(f"{path.name}: output rows do not sum to 1")
    acc = float((probs.argmax(axis=1) == y_va).mean())
    return {"ops": ops, "opset": opset, "acc": acc, "diff": diff}


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
        f"| `{r['file']}` | {r['arch']} | {r['params']:,} | {r['acc']:.2%} | {r['opset']} |"
        for r in rows
    )
    text = f"""# Bundled models

Small fully connected classifiers for scikit-learn's 8x8 handwritten digits, in the style of
the paper "Inverting Neural Networks" (every hidden layer is Linear followed by SELU; the
output is a Softmax). They are tiny, train in seconds on a CPU and are the default test and
benchmark subjects for `onnxinv`.

| Model file | Architecture | Parameters | Validation accuracy | Opset |
|---|---|---|---|---|
{table}

- **Input** `pixels`: float32 `[batch, 64]`, the 8x8 digit image flattened row-major, each
  pixel in [0, 1] (scikit-learn's 0..16 intensities divided by 16).
- **Output** `probs`: float32 `[batch, 10]`, class probabilities for digits 0-9 from a final
  `Softmax(axis=-1)` node. The graphs contain only `Gemm`, `Selu` and `Softmax` nodes.
- **Data**: `sklearn.datasets.load_digits`, stratified 80/20 split with `random_state=0`
  ({n_train} training / {n_val} validation images). Trained with SGD (momentum 0.9, cosine
  learning-rate decay) on the cross-entropy of the pre-softmax output; `torch.manual_seed(0)`.
- `digits_val.npz`: the validation split (`x`: float32 `[{n_val}, 64]` pixels in [0, 1],
  `y`: int64 labels), used by the benchmark to compare inverted inputs with real digits.

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

This retrains all three models (well under a minute on two CPU cores), re-exports the `.onnx`
files with `torch.onnx.export(..., dynamo=False)`, checks them with `onnx.checker` and
onnxruntime (max abs difference from torch < 1e-5), and rewrites `digits_val.npz`, the example
targets and this README (generated by `train.py`: edit the script, not this file). Runs are
seeded; on the same machine and library versions the outputs are byte-identical.
"""
    (HERE / "README.md").write_text(text)


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
        info = export(model, path, x_va, y_va)
        arch = " → ".join(str(w) for w in spec.widths)
        arch += " (SELU hidden, Softmax out)" if len(spec.widths) > 2 else " (Softmax out)"
        print(
            f"{spec.name}: val acc {info['acc']:.4f}  opset {info['opset']}  "
            f"max|ort-torch| {info['diff']:.1e}  {path.stat().st_size} B  "
            f"{time.perf_counter() - t0:.1f}s\n  ops: {' '.join(info['ops'])}"
        )
        if info["acc"] < spec.min_acc:
            print(f"  WARNING: below the {spec.min_acc:.0%} target")
        rows.append(
            {
                "file": path.name,
                "arch": arch,
                "params": n_params(model),
                "acc": info["acc"],
                "opset": info["opset"],
            }
        )

    write_targets()
    write_readme(rows, len(x_tr), len(x_va))


if __name__ == "__main__":
    main()
