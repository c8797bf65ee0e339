"""The suite is offline and safe: no network but loopback, no pickle, no remote code."""
from __future__ import annotations

import socket

import pytest

from .conftest import NetworkBlocked


def test_non_loopback_connections_fail_the_suite():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        with pytest.raises(NetworkBlocked, match="must stay offline"):
            s.connect(("93.184.216.34", 80))
    finally:
        s.close()


def test_loopback_is_allowed():
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    cli = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        cli.connect(srv.getsockname())
    finally:
        cli.close()
        srv.close()


def test_no_pickle_loading_in_the_library():
    from pathlib import Path

    import icp_influence

    root = Path(icp_influence.__file__).parent
    for path in root.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert "pickle.load" not in text, path
        for line in text.splitlines():
            if "torch.load(" in line and "weights_only=True" not in line:
                raise AssertionError(f"{path}: torch.load without weights_only=True: {line.strip()}")
            if "trust_remote_code=True" in line:
                raise AssertionError(f"{path}: trust_remote_code=True hard-coded: {line.strip()}")
