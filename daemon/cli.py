"""The `finetuned` command line: the edge where settings are built from the environment and logging is configured.

Only the standard library and the settings are imported at start-up; each command imports what it uses, so that
`finetuned status` and `--help` answer at once (the daemon's libraries cost about a second to import).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from daemon.config import Settings
from daemon.errors import StartupError
from daemon.spool.files import atomic_write_bytes, deliver
from daemon.spool.names import is_candidate, printable

if TYPE_CHECKING:
    from daemon.logs import LogSetup, Redactor
    from daemon.remote.api import FineTuneAPI

JOB_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,80}$")


def build_parser(*, sandbox_flags: bool = True) -> argparse.ArgumentParser:
    """All commands and their options (the sandbox's own flags only when asked: they import the sandbox)."""
    parser = argparse.ArgumentParser(prog="finetuned", description="The fine-tune daemon.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    spool = _spool_flags()
    run = commands.add_parser("run", parents=[spool], help="run the daemon in the foreground")
    run.add_argument(
        "--once", action="store_true", help="process what is there, resume unfinished jobs, exit when idle"
    )
    run.add_argument(
        "--sandbox", action="store_true", help="start the built-in Together-compatible sandbox and use it (offline)"
    )
    run.add_argument("--sandbox-speed", type=float, default=200.0, help="sandbox clock compression (default 200)")

    submit = commands.add_parser("submit", parents=[spool], help="deliver a spec into the inbox atomically")
    submit.add_argument("spec", type=Path)

    status = commands.add_parser("status", parents=[spool], help="show jobs (all, or one)")
    status.add_argument("job", nargs="?", help="a job id, or its start (e.g. the spec's name)")
    status.add_argument("--json", action="store_true", help="print status documents as JSON")

    check = commands.add_parser("check", parents=[spool], help="validate a spec and its dataset offline")
    check.add_argument("spec", type=Path)

    cancel = commands.add_parser("cancel", parents=[spool], help="cancel a job (and its remote fine-tune)")
    cancel.add_argument("job", help="a job id, or its start when only one job matches")

    _job_commands(commands, spool)

    score = commands.add_parser("score", help="score predictions with the official CoQA scorer's semantics")
    score.add_argument("--data", type=Path, required=True, help="CoQA data file (original json format)")
    score.add_argument("--pred", type=Path, required=True, help="predictions: a JSON list of {id, turn_id, answer}")

    sandbox = commands.add_parser("sandbox", help="serve the Together-compatible sandbox API on loopback")
    if sandbox_flags:
        from daemon.sandbox.__main__ import add_arguments

        add_arguments(sandbox)
    return parser


def _job_commands(commands: Any, spool: argparse.ArgumentParser) -> None:
    """Commands on earlier jobs: `retry` a failed one, and the experiment loop's `again` and `compare`."""
    retry = commands.add_parser("retry", parents=[spool], help="run a failed job again from its failed step")
    retry.add_argument("job", help="a job id, or its start when only one job matches")
    again = commands.add_parser("again", parents=[spool], help="submit the next run of a job, with changes")
    again.add_argument("job", help="the earlier job (an id, or its start)")
    again.add_argument("--set", action="append", metavar="KEY=VALUE", help="e.g. finetune.learning_rate=2e-5")
    again.add_argument("--name", help="the new job's name (default: the old name with the next run number)")
    again.add_argument(
        "--continue", dest="resume", action="store_true", help="train on from the earlier job's fine-tune"
    )
    compare = commands.add_parser("compare", parents=[spool], help="write a comparison report of jobs")
    compare.add_argument("jobs", nargs="+", help="two or more jobs (ids, or their starts)")
    compare.add_argument("--out", type=Path, help="folder for the report (default outbox/compare-<hash>)")


def _spool_flags() -> argparse.ArgumentParser:
    """The flags every command on a spool shares."""
    spool = argparse.ArgumentParser(add_help=False)
    spool.add_argument("--inbox", type=Path, help="spec drop folder (env FINETUNED_INBOX, default ./inbox)")
    spool.add_argument("--outbox", type=Path, help="results folder (env FINETUNED_OUTBOX, default ./outbox)")
    spool.add_argument("--state-dir", type=Path, help="state folder (env FINETUNED_STATE_DIR, default ./state)")
    spool.add_argument("--env-file", type=Path, help="also read variables from this file (the environment wins)")
    return spool


def load_environment(env_file: Path | None, environ: Mapping[str, str]) -> dict[str, str]:
    """The process environment over the env file, read only when one is named (variables already set win, as
    with python-dotenv)."""
    if env_file is None:
        return dict(environ)
    if not env_file.is_file():
        raise StartupError(f"--env-file {env_file}: no such file")
    from dotenv import dotenv_values

    values = {k: v for k, v in dotenv_values(env_file).items() if v is not None}
    return {**values, **environ}


def settings_from(args: argparse.Namespace, environ: Mapping[str, str]) -> Settings:
    """Settings from flags over environment over defaults."""
    env = load_environment(getattr(args, "env_file", None), environ)
    return Settings.from_env(env, inbox=args.inbox, outbox=args.outbox, state_dir=args.state_dir)


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Entry point of the console script."""
    words = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(sandbox_flags=words[:1] == ["sandbox"]).parse_args(words)
    env = dict(os.environ if environ is None else environ)
    try:
        return _dispatch(args, env)
    except StartupError as exc:
        print(f"finetuned: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace, env: dict[str, str]) -> int:
    if args.command == "score":
        return cmd_score(args)
    if args.command == "sandbox":
        return cmd_sandbox(args)
    settings = settings_from(args, env)
    if args.command in ("again", "compare"):
        from daemon import experiment

        return {"again": experiment.main_again, "compare": experiment.main_compare}[args.command](settings, args)
    commands = {
        "run": cmd_run,
        "submit": cmd_submit,
        "status": cmd_status,
        "check": cmd_check,
        "cancel": cmd_cancel,
        "retry": cmd_retry,
    }
    return commands[args.command](args, settings)


def _stop_during_startup(_signum: int, _frame: object) -> None:
    """SIGTERM/SIGINT before the daemon's own handlers are installed: nothing has started, so leave cleanly."""
    raise SystemExit(0)


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    """`finetuned run`: the daemon."""
    import signal

    # Until the service installs its handlers: a stop request exits 0, a SIGHUP (a closed terminal, a reload
    # request) is ignored; settings are read once at start, so a reload means a restart.
    signal.signal(signal.SIGTERM, _stop_during_startup)
    signal.signal(signal.SIGINT, _stop_during_startup)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    import asyncio

    from daemon import logs

    setup = logs.configure(settings.log_level, secrets=settings.secrets())
    return asyncio.run(_run(settings, setup, once=args.once, sandbox=args.sandbox, sandbox_speed=args.sandbox_speed))


async def _run(settings: Settings, setup: LogSetup, *, once: bool, sandbox: bool, sandbox_speed: float) -> int:
    import functools
    import gc

    from daemon.jobs.pipeline import STEPS
    from daemon.remote.lazy import LazyRemote
    from daemon.service import Service

    # The start-up's objects (modules, classes, settings) live as long as the daemon: out of the collector's way,
    # a full collection scans only what jobs allocate (prepare's rows trigger several; each took ~20 ms, now ~5).
    gc.freeze()
    handle = None
    if sandbox:
        from daemon.sandbox import start_sandbox  # aiohttp's server and the simulator: only for --sandbox

        handle = await start_sandbox(speed=sandbox_speed)
    try:
        if handle is not None:
            settings = _point_at_sandbox(settings, handle.base_url, sandbox_speed)
        remote = (
            LazyRemote(functools.partial(_together, settings, setup.redactor)) if settings.together_api_key else None
        )
        try:
            return await Service(settings, STEPS, job_logs=setup.job_logs, remote=remote, once=once).run()
        finally:
            if remote is not None:
                await remote.close()
    finally:
        if handle is not None:
            await handle.close()


def _together(settings: Settings, redactor: Redactor) -> FineTuneAPI:
    """The Together adapter: built when a job, the start-up sweep or the gate first needs it (it imports the SDK)."""
    from daemon.remote.together import TogetherAPI

    return TogetherAPI(settings, redactor=redactor)


def _point_at_sandbox(settings: Settings, base_url: str, speed: float) -> Settings:
    """Use the in-process sandbox; its clock runs `speed` times faster, so polling does too."""
    import dataclasses

    import structlog

    structlog.get_logger().warning(
        "sandbox_in_use", base_url=base_url, note="answers and fine-tunes are simulated; reports say so"
    )
    return dataclasses.replace(
        settings,
        together_base_url=base_url,
        together_api_key="sandbox-key",
        poll_min_s=max(0.05, settings.poll_min_s / speed),
        poll_max_s=max(0.2, settings.poll_max_s / speed),
    )


def cmd_submit(args: argparse.Namespace, settings: Settings) -> int:
    """`finetuned submit SPEC`: write a hidden temp file in the inbox, fsync, rename into place."""
    source: Path = args.spec
    if not source.is_file():
        print(f"finetuned: {printable(str(source))}: no such file", file=sys.stderr)
        return 1
    target = deliver(settings.inbox, source.name, source.read_bytes())
    print(f"submitted {printable(str(source))} as {printable(str(target))}")
    return 0


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    """`finetuned status [JOB] [--json]`: read the status.json files of the outbox; JOB may be an id's start.

    On a terminal: a table of every job (as outbox/index.md), or one job's steps, remote ids, error and metrics.
    Otherwise one line per job (and the document of a single job), for scripts.
    """
    documents = read_statuses(settings.outbox)
    if args.job:
        documents = matching_jobs(documents, args.job)
        if not documents:
            print(f"finetuned: no job {args.job!r} in {settings.outbox}", file=sys.stderr)
            return 1
    one = len(documents) == 1 and bool(args.job)
    if args.json:
        print(json.dumps(documents[0] if one else documents, indent=2))
        return 0
    if not documents:
        print(f"no jobs in {settings.outbox}")
    elif sys.stdout.isatty():
        print(
            "\n".join(_job_detail(settings.outbox, documents[0]) if one else _status_table(settings.outbox, documents))
        )
    else:
        for document in documents:
            print(_status_line(document))
            if one:
                print(json.dumps(document, indent=2))
    return 0


def _status_table(outbox: Path, documents: list[dict[str, Any]]) -> list[str]:
    from daemon.jobs import index  # light: the standard library and the atomic writes

    return index.text_table(index.overview(outbox, documents))


def _job_detail(outbox: Path, document: dict[str, Any]) -> list[str]:
    from daemon.jobs import index

    return index.job_detail(outbox, document)


def matching_jobs(documents: list[dict[str, Any]], query: str) -> list[dict[str, Any]]:
    """The job whose id is `query`, else every job whose id starts with it (a name finds all its runs)."""
    exact = [d for d in documents if d.get("job_id") == query]
    return exact or [d for d in documents if str(d.get("job_id", "")).startswith(query)]


def read_statuses(outbox: Path) -> list[dict[str, Any]]:
    """Every job's status.json, oldest first."""
    documents = []
    for path in sorted(outbox.glob("*/status.json")):
        if path.parent.name.startswith("."):
            continue  # pathlib's `*` matches dot-folders: `.staging-*` ones are not published yet
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(document, dict):  # anything else was not written by finetuned
            documents.append(document)
    return sorted(documents, key=lambda d: str(d.get("created_at") or ""))


def _status_line(document: dict[str, Any]) -> str:
    status = str(document.get("status", "?"))
    step = document.get("step") or ""
    progress = document.get("progress")
    extra = f" {json.dumps(progress, separators=(',', ':'))}" if progress else ""
    error = document.get("error")
    reason = f"  {error.get('type')}: {str(error.get('message'))[:160]}" if isinstance(error, dict) else ""
    return f"{document.get('job_id', '?'):<48} {status:<10} {step:<9}{extra}{reason}"


def cmd_check(args: argparse.Namespace, settings: Settings) -> int:
    """`finetuned check SPEC`: spec, dataset and validation, offline."""
    from daemon import logs
    from daemon.check import check_spec

    logs.configure(settings.log_level, stream=sys.stderr)
    return int(check_spec(args.spec, settings, sys.stdout))


def _one_job(query: str, settings: Settings) -> dict[str, Any] | None:
    """The status document of the one job `query` names (an id or its start); prints why not and returns None."""
    if not JOB_ID_PATTERN.match(query) or not is_candidate(query):
        print(f"finetuned: {query!r} is not a job id", file=sys.stderr)
        return None
    matches = [d for d in matching_jobs(read_statuses(settings.outbox), query) if "job_id" in d]
    if not matches:
        print(f"finetuned: no job {query!r} in {settings.outbox}", file=sys.stderr)
        return None
    if len(matches) > 1:
        names = ", ".join(str(d["job_id"]) for d in matches)
        print(f"finetuned: {query!r} matches {len(matches)} jobs: {names}; name one", file=sys.stderr)
        return None
    return matches[0]


def _request(folder: Path, job_id: str) -> None:
    """Leave a request file the daemon acts on (it is the only writer of state)."""
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(folder / job_id, b"")


def cmd_cancel(args: argparse.Namespace, settings: Settings) -> int:
    """`finetuned cancel JOB`: leave a request the daemon acts on (it is the only writer of state)."""
    document = _one_job(args.job, settings)
    if document is None:
        return 1
    job_id = str(document["job_id"])
    _request(settings.cancel_dir, job_id)
    print(f"cancel requested for {job_id}; the daemon acts on it within seconds (or at its next start)")
    return 0


def cmd_retry(args: argparse.Namespace, settings: Settings) -> int:
    """`finetuned retry JOB`: run a failed job again from its failed step (e.g. an incomplete evaluation asks only
    its missing items); the daemon acts on the request."""
    document = _one_job(args.job, settings)
    if document is None:
        return 1
    job_id = str(document["job_id"])
    if document.get("status") != "failed":
        print(f"finetuned: job {job_id} is {document.get('status')}; only a failed job can be retried", file=sys.stderr)
        return 1
    _request(settings.retry_dir, job_id)
    print(f"retry requested for {job_id}; the daemon runs it again within seconds (or at its next start)")
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    """`finetuned score --data --pred`: print the official scorer's JSON structure."""
    from daemon.errors import DatasetError
    from handlers.evaluation import scoring

    try:
        result, missing = scoring.score_files(args.data, args.pred)
    except DatasetError as exc:
        print(f"finetuned score: {exc}", file=sys.stderr)
        return 2
    for story_id, turn_id in missing:
        print(f"Missing prediction for {story_id} and turn_id: {turn_id}", file=sys.stderr)
    print(json.dumps(result, indent=2))
    return 0


def cmd_sandbox(args: argparse.Namespace) -> int:
    """`finetuned sandbox`: serve until interrupted (the same as `python -m daemon.sandbox`)."""
    from daemon import logs
    from daemon.sandbox.__main__ import serve

    if not 0 <= args.port <= 65535:
        raise StartupError(f"--port {args.port}: a TCP port is 0 to 65535")
    logs.configure("info")
    try:
        return serve(args)
    except OSError as exc:
        raise StartupError(f"cannot serve the sandbox on {args.host}:{args.port}: {exc.strerror or exc}") from exc
