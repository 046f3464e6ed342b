"""subcoder.server.main: the --tcp address, parsed (IPv6 in brackets) and checked before the server starts."""

import os
import socket
import subprocess

import pytest

from lsp_fixtures import REPO, SERVE
from subcoder.server.main import parse_tcp


@pytest.mark.parametrize("text, expected", [
    ("127.0.0.1:2087", ("127.0.0.1", 2087)), ("localhost:0", ("localhost", 0)), (":2087", ("127.0.0.1", 2087)),
    ("2087", ("127.0.0.1", 2087)),
    ("[::1]:2087", ("::1", 2087)), ("[fe80::1%lo]:9", ("fe80::1%lo", 9)),
])
def test_addresses(text, expected):
    assert parse_tcp(text) == expected


@pytest.mark.parametrize("text", ["localhost:http", "", "localhost:", "localhost:70000", "::1:2087", "h:-1"])
def test_bad_addresses_say_what_is_wrong(text):
    with pytest.raises(ValueError, match="--tcp"):
        parse_tcp(text)


def _serve(*args):
    return subprocess.run([*SERVE, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


@pytest.mark.slow
def test_ipv6_and_bad_hosts_are_one_line_and_exit_2():
    bad = _serve("--tcp", "no-such-host.invalid:2087")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "no-such-host.invalid" in bad.stderr, bad.stderr
    if not socket.has_ipv6:
        pytest.skip("no IPv6 here")
    with socket.socket(socket.AF_INET6) as taken:  # a port in use: the bracketed address reached the bind
        try:
            taken.bind(("::1", 0))
        except OSError:
            pytest.skip("::1 cannot be bound here")
        taken.listen()
        busy = _serve("--tcp", f"[::1]:{taken.getsockname()[1]}")
    assert busy.returncode == 2 and "cannot listen on [::1]" in busy.stderr and "Traceback" not in busy.stderr, busy.stderr
