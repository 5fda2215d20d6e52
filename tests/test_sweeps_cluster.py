"""Sweeps on Ray by address (onnxinv/sweeps/cluster.py): which token the driver sends, the one
line for a refused one, and a real sweep through a token-protected head on 127.0.0.1.

The head test starts its own head (``ray start --head --block`` in a new process group, on
the loopback address only) and ends that group afterwards, even when the test fails: not
``ray stop``, which would end every Ray process on the machine, other tests' included. The
drivers are subprocesses with a clean environment, so this process's Ray state (an earlier
test's ``ray.init``) does not leak into them.
"""

from __future__ import annotations

import contextlib
import importlib.machinery
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import pytest
from helpers import BUNDLED, SINGLE_THREAD, ort_errors

from onnxinv.errors import OptionError
from onnxinv.sweeps import cluster

M1 = str(BUNDLED[1])
LOOPBACK = "127.0.0.1"
HEAD_START = 60  # seconds a head may take to come up
DRIVER_RUN = 120  # seconds a driver may take (the whole test takes about 40 s here)


@pytest.fixture
def no_ray_auth(monkeypatch, tmp_path):
    """No RAY_AUTH_* variable, and a home without ~/.ray/auth_token."""
    for name in (cluster.AUTH_MODE, cluster.TOKEN, cluster.TOKEN_PATH):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def with_token_file(home: Path, token: str = "t0ken") -> Path:
    path = home / ".ray" / "auth_token"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(token)
    return path


# --------------------------------------------------------------------------- which token is sent


def test_on_this_machine():
    assert cluster.on_this_machine("127.0.0.1") and cluster.on_this_machine("::1")
    assert not cluster.on_this_machine("203.0.113.7")  # a documentation address: not ours


def test_a_token_the_user_gave_is_sent_anywhere(no_ray_auth, monkeypatch):
    assert cluster.token_to_send("203.0.113.7") is None
    monkeypatch.setenv(cluster.TOKEN, "abc")
    assert cluster.token_to_send("203.0.113.7") == cluster.TOKEN
    monkeypatch.delenv(cluster.TOKEN)
    monkeypatch.setenv(cluster.TOKEN_PATH, "/some/file")
    assert cluster.token_to_send("203.0.113.7") == cluster.TOKEN_PATH


def test_the_default_token_file_goes_only_to_this_machine(no_ray_auth):
    assert cluster.token_to_send(LOOPBACK) is None  # no file
    with_token_file(no_ray_auth)
    assert cluster.default_token_path() == no_ray_auth / ".ray" / "auth_token"
    assert cluster.token_to_send(LOOPBACK) == "~/.ray/auth_token"
    assert cluster.token_to_send("203.0.113.7") is None  # never sent elsewhere unasked


@pytest.mark.parametrize("mode", ["token", "disabled"])
def test_ray_auth_mode_set_by_the_user_is_left_alone(no_ray_auth, monkeypatch, mode):
    monkeypatch.setenv(cluster.AUTH_MODE, mode)
    monkeypatch.setenv(cluster.TOKEN, "abc")
    with_token_file(no_ray_auth)
    assert cluster.token_to_send(LOOPBACK) is None


# ------------------------------------------------------------- connecting, with a stand-in Ray


@pytest.fixture
def listening():
    """A port on 127.0.0.1 that accepts connections (what the probe checks), and nothing else."""
    with socket.socket() as server:
        server.bind((LOOPBACK, 0))
        server.listen()
        yield f"{LOOPBACK}:{server.getsockname()[1]}"


def fake_ray(monkeypatch, init):
    """A stand-in ``ray`` module whose ``init`` is ``init``, recording RAY_AUTH_MODE when
    called. The real Ray's config is kept out of reach (its ``_raylet`` made unimportable)."""
    ray = types.ModuleType("ray")
    ray.__spec__ = importlib.machinery.ModuleSpec("ray", None)
    ray.modes = []

    def recorded(**kwargs):
        ray.modes.append(os.environ.get(cluster.AUTH_MODE))
        return init(**kwargs)

    ray.init, ray.is_initialized, ray.shutdown = recorded, lambda: False, lambda: None
    monkeypatch.setitem(sys.modules, "ray", ray)
    monkeypatch.setitem(sys.modules, "ray._raylet", None)
    return ray


def turned_away(**kwargs):
    """What ray.init raises when the head wants a token it did not get (Ray 2.60's chain)."""
    try:
        raise RuntimeError(
            "Failed to connect to GCS. Last connection error: Traceback (most recent call "
            "last):\nray.exceptions.AuthenticationError: RPC error: InvalidAuthToken: "
            "Authentication token is missing or incorrect."
        )
    except RuntimeError as exc:
        raise ConnectionError("Failed to connect to Ray cluster at 192.0.2.2:1") from exc


def connect(address: str) -> None:
    """Connect and disconnect, as a sweep does around its tasks."""
    with contextlib.ExitStack() as stack:
        cluster.connect_ray(address, stack)


def test_token_mode_lasts_for_the_connection_only(no_ray_auth, monkeypatch, listening):
    monkeypatch.setenv(cluster.TOKEN, "abc")
    ray = fake_ray(monkeypatch, lambda **kwargs: None)
    with contextlib.ExitStack() as stack:
        assert cluster.connect_ray(listening, stack) is ray
        assert os.environ[cluster.AUTH_MODE] == "token"
    assert ray.modes == ["token"]
    assert cluster.AUTH_MODE not in os.environ  # put back as it was


def test_a_head_wanting_a_token_is_one_line_saying_what_to_set(no_ray_auth, monkeypatch, listening):
    fake_ray(monkeypatch, turned_away)
    with pytest.raises(OptionError) as info:
        connect(listening)
    line = str(info.value)
    assert "\n" not in line and line.startswith(f"cannot connect to Ray at '{listening}'")
    assert "wants its authentication token: set RAY_AUTH_TOKEN" in line
    assert "ray get-auth-token" in line and "docs/sweeps-on-ray.md" in line


def test_a_refused_token_is_one_line(no_ray_auth, monkeypatch, listening):
    monkeypatch.setenv(cluster.TOKEN, "not-the-heads")
    ray = fake_ray(monkeypatch, turned_away)
    with pytest.raises(OptionError, match="refused this driver's token") as info:
        connect(listening)
    assert "\n" not in str(info.value) and ray.modes == ["token"]
    assert cluster.AUTH_MODE not in os.environ


def test_ray_auth_mode_disabled_is_named_in_what_to_set(no_ray_auth, monkeypatch, listening):
    monkeypatch.setenv(cluster.AUTH_MODE, "disabled")
    ray = fake_ray(monkeypatch, turned_away)
    with pytest.raises(OptionError, match="set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN"):
        connect(listening)
    assert ray.modes == ["disabled"]


# ------------------------------------------------------------------- a real head on 127.0.0.1

# Ray replaces 127.0.0.1 by the machine's network address unless this is set (for the head and
# the driver): with it, every connection stays on the loopback address.
LOOPBACK_ONLY = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    return {**env, **SINGLE_THREAD, **LOOPBACK_ONLY, "HOME": str(home), **extra}


@contextlib.contextmanager
def ray_head(home: Path):
    """A head on 127.0.0.1, started as a user would (``ray start --head``, no RAY_AUTH_*
    variable) with ``home`` as HOME; yields its ``HOST:PORT``."""
    port = free_port()
    temp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))  # short: Ray's socket paths
    log = temp / "head.log"
    command = [
        sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block",
        "--port", str(port), "--node-ip-address", LOOPBACK, "--num-cpus", "1",
        "--include-dashboard=false", "--disable-usage-stats", "--temp-dir", str(temp),
    ]  # fmt: skip
    with log.open("w") as out:
        head = subprocess.Popen(
            command, env=clean_env(home), stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + HEAD_START
        while "Ray runtime started" not in log.read_text():
            if head.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the Ray head did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        assert "Token authentication is enabled" in log.read_text()  # ~/.ray/auth_token exists
        yield f"{LOOPBACK}:{port}"
    finally:
        head.send_signal(signal.SIGTERM)  # ray start --block ends the processes it started
        with contextlib.suppress(subprocess.TimeoutExpired):
            head.wait(timeout=20)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGKILL)  # whatever of its group is left
        head.wait()
        shutil.rmtree(temp, ignore_errors=True)


def sweep_by_address(address: str, out: Path, env: dict[str, str]):
    code = "import sys; from onnxinv.cli import main; sys.argv[0] = 'onnxinv'; main()"
    command = [sys.executable, "-c", code, "sweep", M1, "--classes", "0,1", "-n", "4",
               "--bounds", "0,1", "-o", str(out), "--ray", address]  # fmt: skip
    return subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=DRIVER_RUN, cwd=out.parent
    )


# A driver that connects by address the way a sweep does and runs one Ray task there.
CONNECT = """
import contextlib, sys
from onnxinv.sweeps.cluster import connect_ray
with contextlib.ExitStack() as stack:
    ray = connect_ray(sys.argv[1], stack)
    print(ray.get(ray.remote(lambda: 6 * 7).remote()))
"""


def check_shards(out: Path) -> None:
    for k in (0, 1):
        folder = out / "digits_1layer" / f"class_{k}"
        report = json.loads((folder / "report.json").read_text())
        x = np.load(folder / "inputs.npy")
        target = np.full(10, 0.1 / 9)
        target[k] = 0.9
        assert report["sweep"]["status"] == "solved" and report["totals"]["verified"] == 4
        assert (ort_errors(M1, x, target, "probabilities") <= 1e-4).all()  # a fresh onnxruntime
    assert (out / "summary.json").is_file() and (out / "figure.png").is_file()


def test_sweep_by_address_through_a_head_that_wants_a_token(tmp_path):
    """The issue's case: ``ray start --head`` on this machine (where ~/.ray/auth_token exists),
    then ``--ray 127.0.0.1:PORT`` with nothing set; and a driver with its own home (as on
    another machine) that has the token in RAY_AUTH_TOKEN."""
    pytest.importorskip("ray", reason="Ray is not installed (the 'ray' extra)")
    token = secrets.token_hex(16)
    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    with_token_file(home, token)
    elsewhere.mkdir()
    out = tmp_path / "out"
    with ray_head(home) as address:
        res = sweep_by_address(address, out, clean_env(home))
        assert res.returncode == 0, res.stderr[-3000:]
        assert "2 pairs: 2 solved" in res.stdout
        check_shards(out)
        env = clean_env(elsewhere, RAY_AUTH_TOKEN=token)
        res = subprocess.run([sys.executable, "-c", CONNECT, address], env=env,
                             capture_output=True, text=True, timeout=DRIVER_RUN)  # fmt: skip
        assert res.returncode == 0 and res.stdout.split() == ["42"], res.stderr[-3000:]
