"""One settings object for a run: every option, its default, its check and its help, once.

:class:`Settings` is a frozen dataclass validated when it is built. The API's keywords
(``invert(model, target, samples=64)``) and the CLI's options (``--samples 64``) are both
generated from its fields, so an option is added in one place: a field with its
:func:`option` metadata. Solvers and the planner receive the object whole.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import OptionError


def option(
    default: Any,
    help: str,
    *,
    check: Callable[[str, Any], Any] | None = None,
    flag: str | None = None,
    short: str | None = None,
    cli_type: Any = None,
    multiple: bool = False,
    metavar: str | None = None,
    cli: bool = True,
    group: str = "run",
    aliases: tuple[str, ...] = (),
) -> Any:
    """A settings field: default, one-line help, and how it is checked and offered on the CLI.

    Args:
        default: the default value (a tuple or None for collections, so fields stay frozen).
        help: one line for ``--help`` and the API docs.
        check: ``check(name, value) -> normalised value``; raises :class:`OptionError`.
        flag: the CLI flag, default ``--`` plus the field name with dashes.
        short: a one-letter alias such as ``-n``.
        cli_type: click's parameter type (default: taken from the default's type).
        multiple: the flag is repeatable and gives a tuple.
        metavar: how the value is shown in ``--help``.
        cli: False for API-only settings.
        group: which part of onnxinv reads it (``run``, ``model``, ``lm``, ``backward``, ``exact``,
            ``gd``), for documentation.
        aliases: earlier names of the field, still accepted by :meth:`Settings.create` and (with
            dashes) on the CLI.
    """
    meta = {
        "help": help,
        "check": check,
        "flag": flag,
        "short": short,
        "cli_type": cli_type,
        "multiple": multiple,
        "metavar": metavar,
        "cli": cli,
        "group": group,
        "aliases": aliases,
    }
    return field(default=default, metadata=meta)


# -- checks ------------------------------------------------------------------------------------


def positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value <= 0:
        raise OptionError(f"{name} must be a positive integer, not {value!r}")
    return int(value)


def non_negative_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
        raise OptionError(f"{name} must be a non-negative integer, not {value!r}")
    return int(value)


def _number(name: str, value: Any, what: str, ok: Callable[[float], bool]) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.number):
        raise OptionError(f"{name} must be {what}, not {value!r}")
    if not ok(float(value)):
        raise OptionError(f"{name} must be {what}, not {value!r}")
    return float(value)


def positive_number(name: str, value: Any) -> float:
    return _number(name, value, "a positive number", lambda v: math.isfinite(v) and v > 0)


def non_negative_number(name: str, value: Any) -> float:
    return _number(name, value, "a non-negative number", lambda v: math.isfinite(v) and v >= 0)


def above_one(name: str, value: Any) -> float:
    return _number(name, value, "a number > 1", lambda v: v > 1)


def timeout_seconds(name: str, value: Any) -> float | None:
    if value is None:
        return None
    return _number(
        name, value, "a positive number of seconds", lambda v: math.isfinite(v) and v > 0
    )


def tensor_name(name: str, value: Any) -> str | None:
    if value is not None and not (isinstance(value, str) and value):
        raise OptionError(f"{name} must be a tensor name (a non-empty string), not {value!r}")
    return value


def parse_bounds(bounds: Any, name: str = "bounds") -> tuple[float, float] | None:
    """Accept None, ``(lo, hi)`` or ``"lo,hi"``; reject anything else with one line."""
    if bounds is None:
        return None
    if isinstance(bounds, str):
        parts = [p.strip() for p in bounds.split(",")]
        if len(parts) != 2:
            raise OptionError(f"{name} must be LO,HI (two numbers), not {bounds!r}")
        try:
            lo, hi = float(parts[0]), float(parts[1])
        except ValueError:
            raise OptionError(f"{name} must be two numbers LO,HI, not {bounds!r}") from None
    else:
        try:
            lo, hi = (float(v) for v in bounds)
        except (TypeError, ValueError):
            raise OptionError(
                f"{name} must be a pair of numbers (lo, hi), not {bounds!r}"
            ) from None
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise OptionError(f"{name} must be finite numbers, not {lo:g},{hi:g}")
    if lo >= hi:
        raise OptionError(f"{name} need LO < HI, got {lo:g},{hi:g}")
    return lo, hi


def parse_shape(shape: Any, name: str = "input_shape") -> tuple[int, ...] | None:
    """Accept None, a sequence of ints or ``"1,3,224,224"``; -1 only first (a batch axis)."""
    if shape is None:
        return None
    try:
        dims = (
            [int(p) for p in shape.replace("x", ",").split(",")]
            if isinstance(shape, str)
            else [int(d) for d in shape]
        )
    except (TypeError, ValueError):
        raise OptionError(f"{name} must be integers such as 1,3,224,224, not {shape!r}") from None
    if not dims or any(d == 0 or d < -1 for d in dims) or -1 in dims[1:]:
        raise OptionError(
            f"{name} must be positive integers (-1 allowed first only), not {shape!r}"
        )
    return tuple(dims)


def plugin_names(name: str, names: Any) -> tuple[str, ...]:
    """Plugin names as a tuple: one string or an iterable of strings."""
    if isinstance(names, str):
        return (names,)
    try:
        out = tuple(names)
    except TypeError:
        raise OptionError(f"{name} must be plugin names, not {names!r}") from None
    if not all(isinstance(n, str) and n for n in out):
        raise OptionError(f"{name} must be plugin names, not {names!r}")
    return out


def method_name(name: str, value: Any) -> str:
    """A method's name (a non-empty string); whether a solver is registered under it is checked
    by :func:`onnxinv.solvers.registry.check_method` when a run starts."""
    if not (isinstance(value, str) and value):
        raise OptionError(f"{name} must be a method name (a non-empty string), not {value!r}")
    return value


def prior_array(name: str, value: Any) -> np.ndarray | None:
    """None, an array, or a path to a .npy file: one reference input (flattened, float64)."""
    if value is None:
        return None
    if isinstance(value, str | bytes) or hasattr(value, "__fspath__"):
        try:
            value = np.load(value, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise OptionError(f"{name}: cannot read {value!r} as a .npy array ({exc})") from None
    try:
        arr = np.asarray(value, dtype=np.float64).ravel()
    except (TypeError, ValueError):
        raise OptionError(f"{name} must be an array of numbers") from None
    if arr.size == 0 or not np.isfinite(arr).all():
        raise OptionError(f"{name} must be a non-empty array of finite numbers")
    arr.setflags(write=False)
    return arr


def device_name(name: str, value: Any) -> str:
    if value not in ("cpu", "cuda"):
        raise OptionError(f"{name} must be 'cpu' or 'cuda', not {value!r}")
    return value


#: How LM forms its steps (:func:`onnxinv.solvers.forward.lm.matrix_free_for`).
JACOBIAN_MODES = ("auto", "dense", "matrix-free")


START_FAMILIES = ("auto", "uniform", "smooth")


def start_family(name: str, value: Any) -> str:
    if value not in START_FAMILIES:
        raise OptionError(f"{name} must be one of {', '.join(START_FAMILIES)}, not {value!r}")
    return value


def jacobian_mode(name: str, value: Any) -> str:
    if value not in JACOBIAN_MODES:
        raise OptionError(f"{name} must be one of {', '.join(JACOBIAN_MODES)}, not {value!r}")
    return value


def memory(name: str, value: Any) -> int | None:
    from .budget import parse_memory

    return None if value is None else parse_memory(value)


def fixed_inputs(name: str, value: Any) -> Mapping[str, np.ndarray] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise OptionError(f"{name} must map input names to arrays, not {type(value).__name__}")
    return dict(value)


# -- the settings ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """Every option of a run, validated once (build with keywords or :meth:`create`)."""

    samples: int = option(16, "How many inputs to find.", check=positive_int, short="-n")
    seed: int = option(0, "Random seed; the same seed gives the same inputs.",
                       check=non_negative_int)  # fmt: skip
    method: str = option(
        "auto",
        "Solver (see `onnxinv methods`).",
        check=method_name,
        cli_type="method",
    )
    bounds: tuple[float, float] | None = option(
        None, "Box for every input value, LO,HI (e.g. 0,1 for images).", check=lambda name, v: parse_bounds(v, name),
        cli_type=str,
    )  # fmt: skip
    input: str | None = option(None, "Input to invert, when there are several.",
                               check=tensor_name, cli_type=str, group="model")  # fmt: skip
    output: str | None = option(None, "Output to match, when there are several.",
                                check=tensor_name, cli_type=str, group="model")  # fmt: skip
    fixed: Mapping[str, Any] | None = option(
        None,
        "Other inputs held at given values ({name: array}; CLI: NAME=FILE with a .npy or "
        "TensorProto .pb, repeatable).",
        check=fixed_inputs, flag="--fix", multiple=True, metavar="NAME=FILE", cli_type=str,
        group="model",
    )  # fmt: skip
    input_shape: tuple[int, ...] | None = option(
        None, "The inverted input's shape where the model leaves it open: the full shape "
        "(1,3,224,224) or one sample's, without the batch axis (3,224,224).",
        check=lambda name, v: parse_shape(v, name), cli_type=str, group="model",
    )  # fmt: skip
    prior: np.ndarray | None = option(
        None, "A reference input (.npy; API: an array): return the preimages nearest it.",
        check=prior_array, cli_type=str, metavar="FILE.npy",
    )  # fmt: skip
    max_iter: int = option(30, "Levenberg–Marquardt iterations per attempt.",
                           check=positive_int, group="lm")  # fmt: skip
    restarts: int = option(3, "Fresh random starts for a sample that stalls.",
                           check=non_negative_int, group="lm")  # fmt: skip
    starts: str = option(
        "auto", "Random starting points: uniform noise, smooth random fields (inputs with two "
        "axes of 32 or more, e.g. images: a random value per 8x8 cell, interpolated), or auto: "
        "smooth fields where a few probes put their outputs nearer the target.",
        check=start_family, cli_type="starts", group="lm",
    )  # fmt: skip
    init_std: float = option(1.0, "Std of random starts when unbounded.",
                             check=positive_number, group="lm")  # fmt: skip
    max_condition: float = option(
        100.0, "Backward pass: singular values below σmax/this count as zero.",
        check=above_one, group="backward",
    )  # fmt: skip
    null_scale: float = option(
        0.1, "Backward pass: norm of the random null-space part of a sample, relative to the "
        "particular solution's.",
        check=non_negative_number, group="backward", aliases=("std",),
    )  # fmt: skip
    milp_time_limit: float = option(
        60.0, "Exact solver and proofs: seconds each mixed-integer program may take ('unknown' past it).",
        check=positive_number, group="exact",
    )  # fmt: skip
    jacobian: str = option(
        "auto", "LM steps from dense Jacobians or matrix-free (conjugate gradients on "
        "Jacobian-vector products); auto: matrix-free when the dense one would not fit "
        "--max-memory or has many rows.",
        check=jacobian_mode, cli_type="jacobian", group="lm",
    )  # fmt: skip
    tv: float = option(
        0.0, "Forward pass: total-variation smoothing of image inputs, step size (0: off).",
        check=non_negative_number, group="lm",
    )  # fmt: skip
    gd_lr: float = option(0.01, "Gradient descent (gd): Adam's learning rate.",
                          check=positive_number, group="gd")  # fmt: skip
    gd_steps: int = option(1000, "Gradient descent (gd): Adam steps at most.",
                           check=positive_int, group="gd")  # fmt: skip
    chunk_size: int = option(256, "Samples solved together (bounds memory).", check=positive_int)
    timeout: float | None = option(None, "Seconds for the whole run; returns what is done.",
                                   check=timeout_seconds, cli_type=float)  # fmt: skip
    max_memory: int | None = option(
        None, "Memory the solvers may hold at once, e.g. 8G [default: half the available memory].",
        check=memory, cli_type=str,
    )  # fmt: skip
    device: str = option("cpu", "Where Jacobians and onnxruntime run.", check=device_name,
                         cli_type="device")  # fmt: skip
    disable_plugins: tuple[str, ...] = option(
        (), "Leave out a plugin (repeatable; also ONNXINV_DISABLE_PLUGINS=a,b).",
        check=plugin_names, flag="--disable-plugin", multiple=True, metavar="NAME",
    )  # fmt: skip

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            check = f.metadata.get("check")
            if check is not None:
                object.__setattr__(self, f.name, check(f.name, getattr(self, f.name)))

    @classmethod
    def create(cls, base: Settings | None = None, **options: Any) -> Settings:
        """``base`` (or the defaults) with ``options`` replaced; unknown names are an error."""
        known = cls.names()
        for f in dataclasses.fields(cls):
            for alias in f.metadata.get("aliases", ()):
                if alias in options:
                    if f.name in options:
                        raise OptionError(f"{alias!r} is the earlier name of {f.name!r}: give one")
                    options[f.name] = options.pop(alias)
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise OptionError(f"unknown option {unknown[0]!r}; the options are: {', '.join(known)}")
        if base is not None and not isinstance(base, Settings):
            raise OptionError(f"settings must be a Settings object, not {type(base).__name__}")
        return dataclasses.replace(base, **options) if base is not None else cls(**options)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    def replace(self, **options: Any) -> Settings:
        """A copy with ``options`` changed (validated again)."""
        return Settings.create(self, **options)

    def report(self) -> dict[str, Any]:
        """The settings as report.json shows them (fixed inputs by shape and dtype)."""
        out: dict[str, Any] = {}
        for name in self.names():
            value = getattr(self, name)
            if name == "fixed":
                value = {
                    k: {"shape": list(np.shape(v)), "dtype": str(np.asarray(v).dtype)}
                    for k, v in (value or {}).items()
                }
            elif name == "prior" and value is not None:
                value = {"size": int(value.size), "norm": float(np.linalg.norm(value))}
            elif isinstance(value, tuple):
                value = list(value)
            out[name] = value
        out["disabled_plugins"] = out.pop("disable_plugins")
        return out


def describe_options(indent: str = "    ") -> str:
    """The options as ``name (default): help`` lines, for docstrings."""
    return "\n".join(
        f"{indent}{f.name} ({f.default!r}): {f.metadata['help']}"
        for f in dataclasses.fields(Settings)
    )
