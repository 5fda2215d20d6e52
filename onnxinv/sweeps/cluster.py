"""Running a sweep's tasks on a Ray cluster: connecting to it, and the pairs as Ray tasks.

* :func:`connect_ray` – the ``ray`` module connected to ``"auto"`` or a head's ``HOST:PORT``
  (or as it is when this process is already connected), or one line saying what is wrong;
* :func:`run_ray` – the pairs as Ray tasks, one CPU each, the models sent through the object
  store and the results sent back, so the nodes need no shared filesystem.

**The token.** A Ray cluster may ask every caller for its authentication token (Ray 2.59 and
later turn this on for a head started where a token exists, ``~/.ray/auth_token``). Ray's own
driver sends a token only in token mode (``RAY_AUTH_MODE=token``), and switches that on by
itself only for ``address="auto"``: a driver given ``HOST:PORT`` is turned away with
``InvalidAuthToken`` even when ``RAY_AUTH_TOKEN`` is set. For ``HOST:PORT``, when
``RAY_AUTH_MODE`` is not set, this driver turns token mode on (for this connection only) when
the user gave it a token (``RAY_AUTH_TOKEN`` or ``RAY_AUTH_TOKEN_PATH``), or when the head is on
this machine and ``~/.ray/auth_token`` exists (the token ``ray start`` used, as ``auto`` would);
``~/.ray/auth_token`` is never sent to another machine unasked. A cluster without token
authentication accepts a driver that sends one. A cluster that still turns the driver away is
one line saying what to set. See docs/sweeps-on-ray.md.
"""

from __future__ import annotations

import contextlib
import importlib.util
import ipaddress
import logging
import math
import os
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..errors import OnnxInvError, OptionError, first_line
from .runners import RETRIES, Finished, Task, limit_threads
from .task import Pair, ShardResult

AUTH_MODE = "RAY_AUTH_MODE"  # "token": send a token; Ray's default otherwise
TOKEN = "RAY_AUTH_TOKEN"  # the token itself
TOKEN_PATH = "RAY_AUTH_TOKEN_PATH"  # a file holding it
DOCS = "docs/sweeps-on-ray.md"


def default_token_path() -> Path:
    """Where ``ray start``/``ray.init()`` keep this user's token when no variable names one."""
    return Path.home() / ".ray" / "auth_token"


def connect_ray(address: str, stack: contextlib.ExitStack):
    """The ``ray`` module, connected to the cluster at ``address`` (disconnected when ``stack``
    closes), or as it is when this process is already connected."""
    try:
        installed = importlib.util.find_spec("ray") is not None
    except (ImportError, ValueError):
        installed = False
    if not installed:
        raise _not_installed()
    if not isinstance(address, str) or not address:
        raise OptionError(f"ray must be 'auto' or a cluster address HOST:PORT, not {address!r}")
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        return ray
    host = probe(address)
    token = None if host is None else token_to_send(host)
    if token is not None:
        stack.enter_context(_token_mode())
    try:
        import ray
    except ImportError:
        raise _not_installed() from None
    with _stderr_held() as drop:
        try:
            ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
        except Exception as exc:
            drop()  # Ray's retries, each logged: the line below says it all
            raise OptionError(_refusal(address, exc)) from None
    stack.callback(ray.shutdown)
    return ray


@contextlib.contextmanager
def _stderr_held() -> Iterator[Callable[[], None]]:
    """What is written to file descriptor 2 meanwhile, held back and written after the block
    unless the function yielded is called: Ray's core logs each of its ~20 connection attempts
    there itself, past Python's ``sys.stderr``, which would bury a refusal's one line."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no descriptor 2 to hold
        yield lambda: None
        return
    dropped = []
    with tempfile.TemporaryFile() as file:
        os.dup2(file.fileno(), 2)
        try:
            yield lambda: dropped.append(True)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            file.seek(0)
            if not dropped and (text := file.read()):
                os.write(2, text)


def _not_installed() -> OptionError:
    return OptionError("Ray is not installed; install the 'ray' extra: pip install 'onnxinv[ray]'")


def probe(address: str) -> str | None:
    """The host of ``address`` (None for ``"auto"``), once something listens at HOST:PORT.

    Fails in one line, at once, when nothing does (``ray.init`` would retry for minutes).
    """
    if address == "auto":
        return None  # ray.init says at once when there is no cluster
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        raise OptionError(
            f"Ray address must be 'auto', HOST:PORT or ray://HOST:PORT, not {address!r}"
        )
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise OptionError(
            f"cannot reach the Ray cluster at {address!r}: {exc.strerror or exc}"
        ) from None
    return host.strip("[]")


def token_to_send(host: str) -> str | None:
    """Where the token comes from that this driver should send to a head at ``host`` although
    ``RAY_AUTH_MODE`` does not say so, or None (Ray's own choice stands).

    ``RAY_AUTH_MODE`` set: the user's choice, left alone. Else a token the user gave
    (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH``) is sent; ``~/.ray/auth_token`` only to a head on
    this machine.
    """
    if AUTH_MODE in os.environ:
        return None
    for variable in (TOKEN, TOKEN_PATH):
        if os.environ.get(variable):
            return variable
    if default_token_path().is_file() and on_this_machine(host):
        return "~/.ray/auth_token"
    return None


def on_this_machine(host: str) -> bool:
    """Whether ``host`` names this machine: a loopback address, or one of its own (which a
    socket can bind to; nothing is sent)."""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return False
    for family, _, _, _, sockaddr in infos:
        ip = str(sockaddr[0])
        with contextlib.suppress(ValueError):
            if ipaddress.ip_address(ip.split("%")[0]).is_loopback:
                return True
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                s.bind((ip, 0))
            return True
        except OSError:
            continue
    return False


@contextlib.contextmanager
def _token_mode() -> Iterator[None]:
    """``RAY_AUTH_MODE=token`` in this process until the block ends (the ``ray.shutdown``
    registered inside it runs first). Ray reads the variable once, when it loads: it is re-read
    here, as Ray does when it turns token mode on for a local cluster."""
    os.environ[AUTH_MODE] = "token"
    _reread_ray_config()
    try:
        yield
    finally:
        os.environ.pop(AUTH_MODE, None)
        _reread_ray_config()


def _reread_ray_config() -> None:
    if "ray" not in sys.modules:
        return  # it reads the variable when it loads
    try:
        from ray._raylet import Config
    except ImportError:
        return
    with contextlib.suppress(AttributeError):
        Config.initialize("")


def _refusal(address: str, exc: BaseException) -> str:
    """One line for a failed ``ray.init``: for a token refused or missing, what to set."""
    texts, seen = [], exc
    while seen is not None and len(texts) < 10:
        texts.append(str(seen))
        seen = seen.__cause__ or seen.__context__
    text = "\n".join(texts)
    where = f"cannot connect to Ray at {address!r}"
    how = f"`ray get-auth-token` on the head prints it; see {DOCS}"
    if "InvalidAuthToken" in text or "token is missing or incorrect" in text:
        if os.environ.get(AUTH_MODE, "").lower() == "token":
            return (
                f"{where}: the cluster refused this driver's token: set {TOKEN} to its own ({how})"
            )
        also = f"{AUTH_MODE}=token and " if AUTH_MODE in os.environ else ""
        return f"{where}: the cluster wants its authentication token: set {also}{TOKEN} ({how})"
    if "RAY_AUTH_TOKEN_PATH is set but" in text:
        path = os.environ.get(TOKEN_PATH)
        return f"{where}: {TOKEN_PATH} names {path!r}, which cannot be read or is empty"
    if "no authentication token was found" in text:
        return f"{where}: {AUTH_MODE} is 'token' but no token is set here: set {TOKEN} ({how})"
    return f"{where}: {first_line(exc)}"


def _ray_task(task: Task, pair: Pair, model: bytes, threads: int) -> ShardResult:
    limit_threads(threads)
    return task(pair, model)


def run_ray(
    ray, pairs: list[Pair], task: Task, models_info: list[dict], workers: int | None
) -> Finished:
    """Submit the pairs as Ray tasks (at most ``workers`` in flight), one CPU each; Ray runs a
    failed task once more (an exception or a dead worker). The models travel as bytes through
    the object store, so the nodes need onnxinv installed but no shared filesystem."""
    if not pairs:
        return
    remote = ray.remote(num_cpus=1, max_retries=RETRIES, retry_exceptions=True)(_ray_task)
    models = {m["name"]: ray.put(model_bytes(m["path"])) for m in models_info}
    waiting = list(pairs)
    running: dict[Any, Pair] = {}
    try:
        while waiting or running:
            while waiting and len(running) < (workers or math.inf):
                pair = waiting.pop(0)
                running[remote.remote(task, pair, models[pair.model], 1)] = pair
            ready, _ = ray.wait(list(running), num_returns=1)
            for ref in ready:
                pair = running.pop(ref)
                try:
                    yield pair, ray.get(ref)
                except Exception as exc:
                    yield pair, getattr(exc, "cause", None) or exc
    finally:
        for ref in running:
            ray.cancel(ref, force=True)


def model_bytes(path: str) -> bytes:
    """The model with its external data, serialized: what a node without the file needs."""
    import onnx

    try:
        return onnx.load(path).SerializeToString()
    except Exception as exc:
        raise OnnxInvError(f"cannot serialize {path} for Ray: {first_line(exc)}") from None
