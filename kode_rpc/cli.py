"""`kode-rpc [serve|chat|schema|doctor|store copy|--version]`; no subcommand means `serve`.

Heavy modules are imported inside each command so `--version` and `schema`
stay cheap and `serve` pays only for what the server needs. The plain `serve`
command lines editors use are read by `_fast_serve_args` without argparse
(importing it and building the parser cost ~5 ms of every start); anything else,
help and every error included, goes through the argparse parser.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from . import __version__

if TYPE_CHECKING:
    import argparse

FRAMINGS = ("content-length", "ndjson")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


HTTP_HELP = ("serve GET /health, /ready and /metrics over HTTP for a process manager on [HOST:]PORT "
             "(host default 127.0.0.1; port 0: a free one, logged to stderr); default: [http] listen in "
             "config.toml, else off")

STORE_HELP = ("store URL: sqlite:///abs/kode.db, postgresql://user@host/db, json:///abs/dir "
              "(default: env KODE_STORE, else [store] url in config.toml, else sqlite://<data dir>/kode.db)")


def _serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help="where the SQLite store lives (default: platform user data dir; env KODE_DATA_DIR)")
    p.add_argument("--store", metavar="URL", help=STORE_HELP)
    p.add_argument("--framing", choices=list(FRAMINGS), default="content-length")
    p.add_argument("--log-level", default="INFO", choices=list(LOG_LEVELS), type=str.upper)
    p.add_argument("--max-agents", type=int, default=None, help="agents kept in memory (default 50)")
    _http_arg(p)


def _http_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--http", metavar="[HOST:]PORT", type=_listen_value, default=None, help=HTTP_HELP)


def _listen_value(value: str) -> str:
    """argparse `type` for `--http`: checked here (a clear usage error), kept as written."""
    import argparse

    from .config import parse_listen

    try:
        parse_listen(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def _fast_serve_args(argv: list[str]) -> dict[str, Any] | None:
    """`serve`'s options when `argv` is `serve` followed only by its options, each spelled in
    full and valid (`--data-dir D` or `--data-dir=D`, ...); None for anything else, which
    argparse then parses (so abbreviations, help and errors behave exactly as before)."""
    if not argv or argv[0] != "serve":
        return None
    opts: dict[str, Any] = {"data_dir": None, "framing": "content-length", "log_level": "INFO", "max_agents": None}
    # "store" and "http" are set only when given, so the usual command lines read as before.
    rest = argv[1:]
    while rest:
        flag, eq, value = rest[0].partition("=")
        if flag not in ("--data-dir", "--framing", "--log-level", "--max-agents", "--store", "--http"):
            return None
        if not eq:
            if len(rest) < 2 or rest[1].startswith("-"):
                return None
            value = rest[1]
        rest = rest[1:] if eq else rest[2:]
        if flag == "--data-dir":
            opts["data_dir"] = value
        elif flag == "--store":
            opts["store"] = value
        elif flag == "--http":
            from .config import parse_listen

            try:
                parse_listen(value)
            except ValueError:
                return None  # argparse says what is wrong
            opts["http"] = value
        elif flag == "--framing":
            if value not in FRAMINGS:
                return None
            opts["framing"] = value
        elif flag == "--log-level":
            if value.upper() not in LOG_LEVELS:
                return None
            opts["log_level"] = value.upper()
        else:
            if not value.isascii() or not value.isdigit():
                return None
            opts["max_agents"] = int(value)
    return opts


def build_parser() -> argparse.ArgumentParser:
    import argparse

    parser = argparse.ArgumentParser(prog="kode-rpc", description="Headless agent backend over JSON-RPC on stdio.")
    parser.add_argument("--version", action="version", version=f"kode-rpc {__version__}")
    sub = parser.add_subparsers(dest="command")
    _serve_args(sub.add_parser("serve", help="serve protocol v1 on stdin/stdout (the default)"))
    chat = sub.add_parser("chat", help="talk to an agent in the terminal through a spawned server")
    chat.add_argument("--provider", help="echo, scripted, anthropic, openai, or a local preset: ollama, lmstudio, "
                                         "vllm, llamacpp (default: from config, else echo)")
    chat.add_argument("--model")
    chat.add_argument("--base-url", help="provider endpoint (OpenAI-compatible: with /v1)")
    chat.add_argument("--data-dir")
    chat.add_argument("--agent", help="agent id to create or resume")
    chat.add_argument("--mode", choices=["auto", "approval", "readonly"], default="readonly", help="permission mode")
    chat.add_argument("--work-dir", help="sandbox directory (default: current directory)")
    chat.add_argument("--script", help="JSON file with a `scripted` provider script")
    chat.add_argument("-m", "--message", action="append", help="send this message and exit (repeatable)")
    acp = sub.add_parser("acp", help="speak the Agent Client Protocol on stdin/stdout (Zed, JetBrains, ACP plugins)")
    acp.add_argument("--data-dir")
    acp.add_argument("--store", metavar="URL", help=STORE_HELP)
    acp.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    _http_arg(acp)
    sub.add_parser("schema", help="print the JSON Schema of the whole protocol")
    doctor = sub.add_parser("doctor", help="check paths, database, configured providers (exit 1 on problems)")
    doctor.add_argument("--data-dir")
    doctor.add_argument("--store", metavar="URL", help=STORE_HELP)
    doctor.add_argument("--json", action="store_true", help="machine-readable report")
    store = sub.add_parser("store", help="work with stores (copy agents between them)")
    store_sub = store.add_subparsers(dest="store_command")
    copy = store_sub.add_parser("copy", help="copy agents (events with their seqs, messages, tool calls, approvals, "
                                             "todos, usage) from one store to another; existing ones are skipped")
    copy.add_argument("source", metavar="FROM", help="source store URL")
    copy.add_argument("target", metavar="TO", help="target store URL")
    copy.add_argument("--agent", action="append", metavar="ID", help="copy only this agent (repeatable)")
    return parser


def _use_store(url: str | None) -> None:
    """`--store URL` for `serve`: handed to the server as KODE_STORE, which `--store` outranks anyway
    (and which tools never see: sandbox/env.py removes it)."""
    if url:
        import os

        os.environ["KODE_STORE"] = url


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("--") and argv[0] not in ("--version", "-h", "--help"):
        argv = ["serve", *argv]
    fast = _fast_serve_args(argv)
    if fast is not None:
        from .server.app import serve

        _use_store(fast.get("store"))
        return serve(fast["data_dir"], fast["framing"], fast["log_level"], fast["max_agents"], fast.get("http"))
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "serve":
        from .server.app import serve

        _use_store(args.store)
        return serve(args.data_dir, args.framing, args.log_level, args.max_agents, args.http)
    if args.command == "acp":
        from .acp.app import serve_acp

        _use_store(args.store)
        return serve_acp(args.data_dir, args.log_level, args.http)
    if args.command == "schema":
        import json

        from .protocol.schema import protocol_schema

        try:
            sys.stdout.write(json.dumps(protocol_schema(__version__), indent=2) + "\n")
            sys.stdout.flush()
        except BrokenPipeError:  # `kode-rpc schema | head`
            import os

            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    if args.command == "doctor":
        from .doctor import run_doctor

        return run_doctor(args.data_dir, args.json, args.store)
    if args.command == "store":
        if args.store_command == "copy":
            from .store.copy import run_copy

            return run_copy(args.source, args.target, args.agent)
        parser.parse_args(["store", "--help"])
        return 2
    if args.command == "chat":
        from .chat import run_chat

        return run_chat(args)
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
