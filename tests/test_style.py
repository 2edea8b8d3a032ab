"""House rules that code review would otherwise have to remember: layering, one SDK importer, one env reader,
one broad except, docstrings on every test, size budgets."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted([*ROOT.joinpath("daemon").rglob("*.py"), *ROOT.joinpath("handlers").rglob("*.py")])
FORBIDDEN_FOR_HANDLERS = {
    "daemon.jobs.runner",
    "daemon.jobs.state",
    "daemon.jobs.pipeline",
    "daemon.service",
    "daemon.spool.inbox",
    "daemon.spool.intake",
    "daemon.spool.outbox",
    "daemon.status_server",
    "daemon.remote.together",
    "daemon.cli",
}


def imports_of(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_handlers_do_not_import_the_service_core() -> None:
    """Handlers get everything through JobContext: no runner, state, spool, outbox or service imports."""
    offenders = {
        rel(p): sorted(imports_of(p) & FORBIDDEN_FOR_HANDLERS)
        for p in ROOT.joinpath("handlers").rglob("*.py")
        if imports_of(p) & FORBIDDEN_FOR_HANDLERS
    }
    assert offenders == {}


def test_only_the_adapter_imports_together() -> None:
    """The `together` SDK is imported by daemon/remote/together.py alone."""
    importers = [rel(p) for p in SOURCES if any(n == "together" or n.startswith("together.") for n in imports_of(p))]
    assert importers == ["daemon/remote/together.py"]


def test_only_config_reads_the_environment() -> None:
    """Settings are built once at the edge: nothing but daemon/config.py touches os.environ or os.getenv."""
    readers = [rel(p) for p in SOURCES if "os.environ" in p.read_text() or "os.getenv" in p.read_text()]
    assert readers in ([], ["daemon/config.py"], ["daemon/cli.py"], ["daemon/cli.py", "daemon/config.py"])
    cli = ROOT.joinpath("daemon", "cli.py").read_text()
    assert cli.count("os.environ") <= 1  # main() hands the environment to Settings.from_env once


def reraises(handler: ast.ExceptHandler) -> bool:
    return any(isinstance(n, ast.Raise) and n.exc is None for n in ast.walk(handler))


# The boundaries where a failure is one unit's, never the daemon's: a job (runner), an input (intake), the watch
# hint (service: the directory scan is the truth, so a failing watcher only costs latency).
BOUNDARIES = {"daemon/jobs/runner.py": 1, "daemon/spool/intake.py": 1, "daemon/service.py": 1}


def test_one_broad_except_at_the_job_boundary() -> None:
    """A broad `except Exception` that does not re-raise appears only at the named boundaries, once each."""
    hits = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ExceptHandler) and isinstance(node.type, ast.Name):
                if node.type.id in {"Exception", "BaseException"} and not reraises(node):
                    hits.append(rel(path))
    assert {h: hits.count(h) for h in hits} == BOUNDARIES


def test_every_test_has_a_docstring() -> None:
    """Every test function says in one line what behaviour it checks."""
    missing = []
    for path in ROOT.joinpath("tests").rglob("test_*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test_"):
                if not ast.get_docstring(node):
                    missing.append(f"{rel(path)}::{node.name}")
    assert missing == []


def test_modules_and_functions_stay_small() -> None:
    """Modules stay within 400 lines and functions within 40 (the house budget)."""
    big_modules = [rel(p) for p in SOURCES if len(p.read_text().splitlines()) > 400]
    big_functions = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno:
                if node.end_lineno - node.lineno > 40:
                    big_functions.append(f"{rel(path)}::{node.name}")
    assert big_modules == [] and big_functions == []


def test_no_executor_that_drops_log_context() -> None:
    """`run_in_executor` loses contextvars (and with them the job id in logs): asyncio.to_thread is used instead."""
    assert [rel(p) for p in SOURCES if "run_in_executor" in p.read_text()] == []
