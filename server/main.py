"""`subcoder serve`: parse the serve options, set up logging, start the language server."""

from __future__ import annotations

import argparse
import logging
import socket
import sys

from .settings import LOG_LEVELS, python_log_level


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="subcoder serve", description="Run the subcoder language server (LSP over stdio).")
    p.add_argument("--stdio", action="store_true", help="speak LSP over stdin/stdout (the default)")
    p.add_argument("--tcp", metavar="HOST:PORT", help="listen on a TCP socket instead (for debugging)")
    p.add_argument("--log-level", choices=LOG_LEVELS, default="info")
    p.add_argument("--log-file", help="rotating log file (default: server.log in the platform's log folder)")
    return p


def parse_tcp(text: str) -> tuple[str, int]:
    """(host, port) from `HOST:PORT`, `[IPv6]:PORT`, `:PORT` or `PORT` (localhost); ValueError says what is wrong."""
    host, _, port_text = text.rpartition(":")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"--tcp needs HOST:PORT with a port from 0 to 65535, got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]  # [::1]:P: the brackets only separate the address's colons from the port's
    elif ":" in host:
        raise ValueError(f"--tcp: write an IPv6 address in brackets, as [{host}]:{port_text}")
    return host or "127.0.0.1", int(port_text)


def _check_host(host: str, port: int) -> None:
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise ValueError(f"--tcp: cannot use host {host!r}: {getattr(exc, 'strerror', None) or exc}") from None


def run(args: list[str]) -> int:
    options = parser().parse_args(args)
    host = port = None
    if options.tcp:
        try:
            host, port = parse_tcp(options.tcp)
            _check_host(host, port)
        except ValueError as exc:
            print(f"subcoder serve: {exc}", file=sys.stderr)
            return 2
    from . import logs

    log_path = logs.setup(python_log_level(options.log_level), options.log_file)
    from .protocol import serve_stdio, serve_tcp
    from .server import server

    logging.getLogger().addHandler(logs.ClientHandler(server.send_log, python_log_level(options.log_level)))
    log = logging.getLogger(__name__)
    log.info("subcoder serve starting (log file %s)", log_path)
    from subcoder.pruner import paths

    paths.terminate_as_interrupt()  # `kill` ends the server like Ctrl-C: the build child is stopped with it
    for folder in (paths.submodels_dir(), paths.models_dir()):  # what writes killed before this start left
        for leftover in paths.clean_stale_temps(folder):
            log.info("removed %s, left by an interrupted write", leftover)
    try:
        if options.tcp:
            try:
                serve_tcp(server, host, port)
            except OSError as exc:  # the address is taken or not ours: one line, not a traceback
                print(f"subcoder serve: cannot listen on {options.tcp}: {exc.strerror or exc}", file=sys.stderr)
                return 2
        else:
            stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
            # stdout carries JSON-RPC: anything a library prints goes to stderr instead.
            sys.stdout = sys.stderr
            serve_stdio(server, stdin, stdout)
    finally:
        server.session.shutdown()
    # `exit` before `shutdown` ends with 1, as the protocol asks; a client that just went away, with 0.
    return server.exit_code or 0
