"""Shared fixtures. The suite is offline: HF_HUB_OFFLINE=1, and any network connection
other than loopback fails the test that makes it."""
from __future__ import annotations

import ipaddress
import os
import socket

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class NetworkBlocked(RuntimeError):
    pass


def _is_loopback(address) -> bool:
    if isinstance(address, (str, bytes)):  # AF_UNIX path
        return True
    host = address[0]
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


def _guarded_connect(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address):
        raise NetworkBlocked(f"test tried to reach {address!r}: the suite must stay offline (loopback only)")
    return _real_connect(self, address)


def _guarded_connect_ex(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address):
        raise NetworkBlocked(f"test tried to reach {address!r}: the suite must stay offline (loopback only)")
    return _real_connect_ex(self, address)


socket.socket.connect = _guarded_connect  # type: ignore[method-assign]
socket.socket.connect_ex = _guarded_connect_ex  # type: ignore[method-assign]


@pytest.fixture(scope="session")
def smollm2():
    """The embedded SmolLM2-135M-Instruct (loaded once per session)."""
    from icp_influence.models import load_model

    return load_model("smollm2-135m-instruct", device="cpu")


@pytest.fixture(scope="session")
def tiny_models():
    from icp_influence.models import TINY_SPECS, load_model

    return {spec: load_model(spec, device="cpu") for spec in TINY_SPECS}


@pytest.fixture
def small_pool():
    from icp_influence.synthetic import make_synthetic_pool

    return make_synthetic_pool(28, seed=0)


_NOTEBOOK_TIMES: dict[str, float] = {}


def record_notebook_time(name: str, seconds: float) -> None:
    _NOTEBOOK_TIMES[name] = seconds


def pytest_terminal_summary(terminalreporter):
    if _NOTEBOOK_TIMES:
        tr = terminalreporter
        tr.section("notebooks (smoke mode, real kernel)")
        for name, s in sorted(_NOTEBOOK_TIMES.items()):
            tr.write_line(f"{name:<48} {s:7.1f} s  (budget 120 s){'  OVER BUDGET' if s > 120 else ''}")
        tr.write_line(f"{'total':<48} {sum(_NOTEBOOK_TIMES.values()):7.1f} s")


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a module (tiny models run fastest so, and the test machine is shared);
    use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    """A test that runs the command line in-process (``main(["score", ...])``) fits torch's
    threads to the machine; the next test starts with the count it had before."""
    import torch

    threads = torch.get_num_threads()
    yield
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
