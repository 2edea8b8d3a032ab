"""`python -m daemon.sandbox`: run the simulated Together API in the foreground (see the package docstring)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal

from daemon.sandbox import DEFAULT_SPEED, serve_sandbox


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The sandbox's flags (shared with `finetuned sandbox`)."""
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--speed", type=float, default=DEFAULT_SPEED, help="simulated seconds per real second")
    parser.add_argument("--latency-ms", default="0", help='chat latency: "50" or "20-80"')
    parser.add_argument("--fault-rate", type=float, default=0.0, help="share of /v1/ requests answered 429/5xx")
    parser.add_argument("--retry-after-s", type=float, default=1.0, help="Retry-After of injected 429s")
    parser.add_argument("--seed", type=int, default=0)


def main(argv: list[str] | None = None) -> int:
    """Parse flags and serve until Ctrl-C."""
    parser = argparse.ArgumentParser(prog="python -m daemon.sandbox", description="Simulated Together API.")
    add_arguments(parser)
    return serve(parser.parse_args(argv))


def serve(args: argparse.Namespace) -> int:
    """Serve with the parsed flags until SIGINT or SIGTERM."""
    print(f"sandbox (SIMULATED Together API) on http://{args.host}:{args.port}", flush=True)
    asyncio.run(_serve_until_signalled(args))
    return 0


async def _serve_until_signalled(args: argparse.Namespace) -> None:
    """Serve until SIGINT or SIGTERM, then close cleanly."""
    server = asyncio.create_task(
        serve_sandbox(
            args.host,
            args.port,
            speed=args.speed,
            latency_ms=args.latency_ms,
            fault_rate=args.fault_rate,
            seed=args.seed,
            retry_after_s=args.retry_after_s,
        )
    )
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, server.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await server


if __name__ == "__main__":
    raise SystemExit(main())
