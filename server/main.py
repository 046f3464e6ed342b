"""`subcoder serve`: parse the serve options, set up logging, start the language server."""

from __future__ import annotations

import argparse
import logging
import sys

from .settings import LOG_LEVELS, python_log_level


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="subcoder serve", description="Run the subcoder language server (LSP over stdio).")
    p.add_argument("--stdio", action="store_true", help="speak LSP over stdin/stdout (the default)")
    p.add_argument("--tcp", metavar="HOST:PORT", help="listen on a TCP socket instead (for debugging)")
    p.add_argument("--log-level", choices=LOG_LEVELS, default="info")
    p.add_argument("--log-file", help="rotating log file (default: server.log in the platform's log folder)")
    return p


def run(args: list[str]) -> int:
    options = parser().parse_args(args)
    host = port = None
    if options.tcp:
        host, _, port_text = options.tcp.rpartition(":")
        try:
            port = int(port_text)
        except ValueError:
            print(f"subcoder serve: --tcp needs HOST:PORT, got {options.tcp!r}", file=sys.stderr)
            return 2
    from . import logs

    log_path = logs.setup(python_log_level(options.log_level), options.log_file)
    from .server import server

    logging.getLogger().addHandler(logs.ClientHandler(server.send_log, python_log_level(options.log_level)))
    logging.getLogger(__name__).info("subcoder serve starting (log file %s)", log_path)
    try:
        if options.tcp:
            server.start_tcp(host or "127.0.0.1", port)
        else:
            stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
            # stdout carries JSON-RPC: anything a library prints goes to stderr instead.
            sys.stdout = sys.stderr
            server.start_io(stdin, stdout)
    finally:
        server.session.shutdown()
    # `exit` before `shutdown` ends with 1, as the protocol asks; a client that just went away, with 0.
    return server.exit_code or 0
