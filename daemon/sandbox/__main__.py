"""`python -m daemon.sandbox`: run the simulated Together API in the foreground (see the package docstring)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal

from daemon.sandbox import DEFAULT_SPEED, serve_sandbox
from daemon.sandbox.flavours import FLAVOURS
from daemon.sandbox.knobs import DEFAULTS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The sandbox's flags (shared with `finetuned sandbox`)."""
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--speed", type=float, default=DEFAULT_SPEED, help="simulated seconds per real second")
    parser.add_argument("--latency-ms", default="0", help='chat latency: "50" or "20-80"')
    parser.add_argument("--fault-rate", type=float, default=0.0, help="share of /v1/ requests answered 429/5xx")
    parser.add_argument("--retry-after-s", type=float, default=1.0, help="Retry-After of injected 429s")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--slots", type=int, default=0, help="chat requests served at once, the rest queue (0 = all)")
    parser.add_argument("--context-tokens", type=int, default=0, help="context limit in tokens (0 = none)")
    parser.add_argument("--flavour", choices=FLAVOURS, default="together", help="whose error wording to imitate")
    parser.add_argument("--rate-limit-rpm", type=int, default=0, help="chat requests per minute (0 = no limit)")
    parser.add_argument("--rate-limit-tpm", type=int, default=0, help="chat tokens per minute (0 = no limit)")
    parser.add_argument(
        "--serverless-lora",
        default=DEFAULTS["serverless_lora"],
        metavar="MODEL[,MODEL]",
        help="base models whose LoRA fine-tunes are served serverless",
    )
    parser.add_argument(
        "--endpoint-startup-s", type=float, default=120.0, help="simulated seconds a dedicated endpoint takes to start"
    )
    parser.add_argument(
        "--lean", action="store_true", help="answer only the fields Together's published contract declares"
    )
    parser.add_argument(
        "--no-v2-endpoints",
        dest="v2_endpoints",
        action="store_false",
        help="do not serve the SDK's project-scoped endpoint surface (/v2/projects/..., whoami): v1 only",
    )


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
            slots=args.slots,
            context_tokens=args.context_tokens,
            flavour=args.flavour,
            rate_limit_rpm=args.rate_limit_rpm,
            rate_limit_tpm=args.rate_limit_tpm,
            serverless_lora=args.serverless_lora,
            lean=args.lean,
            endpoint_startup_s=args.endpoint_startup_s,
            v2_endpoints=args.v2_endpoints,
        )
    )
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, server.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await server


if __name__ == "__main__":
    raise SystemExit(main())
