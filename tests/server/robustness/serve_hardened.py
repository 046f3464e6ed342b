"""`subcoder serve` with `subcoder.server.protocol` wired in, for the robustness tests, until server.py
and main.py wire it in themselves (then the two patches below change nothing).

Run as a script with `subcoder serve`'s arguments."""

from __future__ import annotations

import sys

import pygls.lsp._base_server as base
from pygls.protocol import LanguageServerProtocol

from subcoder.server import protocol

_init = base.BaseLanguageServer.__init__


def _init_with_protocol(self, protocol_cls=protocol.SubcoderProtocol, *args, **kwargs):
    if protocol_cls is LanguageServerProtocol:
        protocol_cls = protocol.SubcoderProtocol
    _init(self, protocol_cls, *args, **kwargs)


base.BaseLanguageServer.__init__ = _init_with_protocol  # before the server object is built at import

from subcoder.server.main import run  # noqa: E402
from subcoder.server.server import server  # noqa: E402

assert isinstance(server.protocol, protocol.SubcoderProtocol)
server.start_io = lambda stdin, stdout: protocol.serve_stdio(server, stdin, stdout)
server.start_tcp = lambda host, port: protocol.serve_tcp(server, host, port)

if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
