"""The experiment loop from the command line: `finetuned again` (the next run from an earlier one's spec) and
`finetuned compare` (finished jobs side by side, like a sweep's variants).

Both read only the outbox (each job's folder keeps its spec and its results) and, for `again`, deliver a new spec
into the inbox the way `finetuned submit` does: the daemon stays the only writer of state.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

from daemon.config import Settings
from daemon.errors import SpecError
from daemon.spec import JobSpec, parse_spec
from daemon.spool.files import deliver

OUTPUT_FILES = frozenset({"status.json", "metrics.json", "dataset.json", "validation.json", "sweep.json"})
_RUN_NUMBER = re.compile(r"^(?P<base>.+?)-(?P<n>\d{1,4})$")


class ExperimentError(Exception):
    """A command of the loop cannot do what was asked; the message says why."""


def job_folder(settings: Settings, query: str) -> Path:
    """The outbox folder of the one job whose id is `query` or starts with it."""
    folders = [p for p in sorted(settings.outbox.glob("*/status.json")) if not p.parent.name.startswith(".")]
    exact = [p.parent for p in folders if p.parent.name == query]
    found = exact or [p.parent for p in folders if p.parent.name.startswith(query)]
    if not found:
        raise ExperimentError(f"no job {query!r} in {settings.outbox}")
    if len(found) > 1:
        raise ExperimentError(f"{query!r} matches {len(found)} jobs: {', '.join(p.name for p in found)}; name one")
    return found[0]


def spec_of(folder: Path) -> tuple[Path, JobSpec]:
    """The spec file a job's folder keeps (the input as it was dropped), parsed."""
    status = json.loads((folder / "status.json").read_text(encoding="utf-8"))
    for path in sorted(folder.iterdir()):
        if path.suffix not in (".yaml", ".yml", ".json") or path.name in OUTPUT_FILES or not path.is_file():
            continue
        try:
            spec = parse_spec(path.read_bytes(), path.name)
        except SpecError:
            continue
        if spec.name == status.get("name"):
            return path, spec
    raise ExperimentError(f"{folder}: the job's spec is not in its folder (was it rejected before it ran?)")


def apply_set(data: dict[str, Any], assignment: str) -> None:
    """Apply one `dotted.key=value` to the spec's mapping (the value read as JSON or YAML: numbers, lists, null)."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key:
        raise ExperimentError(f"--set {assignment!r}: expected KEY=VALUE, e.g. finetune.learning_rate=2e-5")
    *parents, last = key.split(".")
    node = data
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ExperimentError(f"--set {assignment!r}: {part!r} is not a section of the spec")
        node = child
    node[last] = _value(raw)


def _value(raw: str) -> Any:
    """JSON first (so `3e-5` is a number: YAML 1.1 reads it as text), then YAML (bare words, `[a, b]`)."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return yaml.safe_load(raw)


def next_name(settings: Settings, name: str) -> str:
    """`name-2`, `name-3`, ...: the first run number no job in the outbox has used."""
    match = _RUN_NUMBER.match(name)
    base = match.group("base") if match else name
    used = {p.parent.name.rsplit("-", 1)[0] for p in settings.outbox.glob("*/status.json")}
    number = int(match.group("n")) + 1 if match else 2
    while f"{base}-{number}" in used:
        number += 1
    return f"{base}-{number}"[:64]


def again(settings: Settings, query: str, assignments: list[str], *, name: str | None, resume: bool) -> Path:
    """Write a spec derived from an earlier job's (with changes and a new name) into the inbox; return its path."""
    folder = job_folder(settings, query)
    path, spec = spec_of(folder)
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if resume:
        if spec.finetune is None:
            raise ExperimentError(f"{folder.name} has no fine-tune to continue from")
        data.setdefault("finetune", {})["from_checkpoint"] = folder.name
    for assignment in assignments:
        apply_set(data, assignment)
    data["name"] = name or next_name(settings, spec.name)
    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True).encode()
    try:
        parse_spec(text, f"{data['name']}.yaml")
    except SpecError as exc:
        raise ExperimentError(f"the derived spec is not valid: {exc}") from None
    return deliver(settings.inbox, f"{data['name']}.yaml", text)


def compare(settings: Settings, queries: list[str], out: Path | None) -> Path:
    """Write a comparison report of finished jobs (the finetune values that differ are the columns)."""
    from handlers.experiment.compare import row_from_folder, write_comparison

    folders = [job_folder(settings, query) for query in queries]
    if len(folders) < 2:
        raise ExperimentError("compare needs at least two jobs")
    finetunes = [_finetune_values(folder) for folder in folders]
    keys = sorted({k for values in finetunes for k in values if len({json.dumps(v.get(k)) for v in finetunes}) > 1})
    rows = []
    for folder, values in zip(folders, finetunes, strict=True):
        status = json.loads((folder / "status.json").read_text(encoding="utf-8"))
        row = row_from_folder(
            folder,
            name=folder.name,
            overrides={k: values.get(k) for k in keys},
            status=str(status.get("status")),
            error=(status.get("error") or {}).get("message"),
            price_usd=_price(status),  # status.json carries a price once the job's money is published there
            link=f"../{folder.name}/report.md",
        )
        rows.append(row)
    digest = hashlib.sha256(" ".join(f.name for f in folders).encode()).hexdigest()[:8]
    target = out or settings.outbox / f"compare-{digest}"
    write_comparison(target, rows, keys, metric="f1", title="Comparison of " + ", ".join(f.name for f in folders))
    return target / "report.md"


def _finetune_values(folder: Path) -> dict[str, Any]:
    _, spec = spec_of(folder)
    return spec.finetune.model_dump(exclude={"suffix"}) if spec.finetune else {}


def _price(status: dict[str, Any]) -> float | None:
    price = (status.get("cost") or {}).get("total_usd")
    return float(price) if isinstance(price, int | float) else None


def main_again(settings: Settings, args: Any) -> int:
    """`finetuned again JOB [--set KEY=VALUE ...] [--name NAME] [--continue]`."""
    try:
        target = again(settings, args.job, args.set or [], name=args.name, resume=args.resume)
    except ExperimentError as exc:
        print(f"finetuned: {exc}", file=sys.stderr)
        return 1
    print(f"submitted {target}")
    return 0


def main_compare(settings: Settings, args: Any) -> int:
    """`finetuned compare JOB JOB... [--out DIR]`."""
    try:
        report = compare(settings, args.jobs, args.out)
    except ExperimentError as exc:
        print(f"finetuned: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {report}")
    return 0
