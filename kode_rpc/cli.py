"""`kode-rpc [serve|chat|schema|--version]`; no subcommand means `serve`.

Heavy modules are imported inside each command so `--version` and `schema`
stay cheap and `serve` pays only for what the server needs.
"""

from __future__ import annotations

import argparse
import json
import sys

from . import __version__


def _serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help="where the SQLite store lives (default: platform user data dir; env KODE_DATA_DIR)")
    p.add_argument("--framing", choices=["content-length", "ndjson"], default="content-length")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"], type=str.upper)
    p.add_argument("--max-agents", type=int, default=None, help="agents kept in memory (default 50)")


def build_parser() -> argparse.ArgumentParser:
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
    sub.add_parser("schema", help="print the JSON Schema of the whole protocol")
    doctor = sub.add_parser("doctor", help="check paths, database, configured providers (exit 1 on problems)")
    doctor.add_argument("--data-dir")
    doctor.add_argument("--json", action="store_true", help="machine-readable report")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0].startswith("--") and argv[0] not in ("--version", "-h", "--help"):
        argv = ["serve", *argv]
    args = parser.parse_args(argv)
    if args.command == "serve":
        from .server.app import serve

        return serve(args.data_dir, args.framing, args.log_level, args.max_agents)
    if args.command == "schema":
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

        return run_doctor(args.data_dir, args.json)
    if args.command == "chat":
        from .chat import run_chat

        return run_chat(args)
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
