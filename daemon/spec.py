"""The job spec: a pydantic model of the file a user drops into inbox/, parsed from YAML or JSON with located errors."""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from daemon.errors import SpecError

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
COOKBOOK_SYSTEM_PROMPT = "Read the story and extract answers for the questions.\nStory: {story}"

PositiveInt = Annotated[int, Field(gt=0)]

# Bounds on a YAML document, checked on the parser's events before anything is built (an alias bomb is rejected
# without being expanded): aliases written, nesting depth, and nodes counted as if every alias were expanded.
MAX_YAML_ALIASES = 100
MAX_YAML_DEPTH = 64
MAX_YAML_NODES = 20_000


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ColumnsMapping(_Strict):
    """Where a `columns` dataset keeps its conversation (ShareGPT-style defaults)."""

    messages: str = "conversations"
    role: str = "from"
    content: str = "value"
    system: str | None = None


class DatasetSpec(_Strict):
    """Where the data comes from and how it becomes chat JSONL."""

    source: str = Field(min_length=1)
    format: Literal["coqa", "messages", "columns"] = "coqa"
    config: str | None = None
    train_split: str = "train"
    eval_split: str | None = "validation"
    system_prompt: str | None = None
    limit: PositiveInt | None = None
    shuffle: bool = False
    seed: int = 42
    max_turns: PositiveInt | None = None
    validation_size: PositiveInt | None = None
    min_examples: PositiveInt = 1
    roles: dict[str, Literal["system", "user", "assistant"]] = Field(default_factory=dict)
    columns: ColumnsMapping = Field(default_factory=ColumnsMapping)

    @property
    def prompt_template(self) -> str:
        """The system prompt template, the cookbook's when the spec gives none."""
        return self.system_prompt if self.system_prompt is not None else COOKBOOK_SYSTEM_PROMPT


class StopWhen(_Strict):
    """Rules that stop a running fine-tune early (checked on every poll): the remote job is cancelled, the reason
    recorded, and the stopped run is reported but not evaluated."""

    eval_loss_patience: PositiveInt | None = None  # eval loss has not improved for this many evaluations
    min_delta: float = Field(default=0.0, ge=0)  # an improvement smaller than this does not count
    loss_above: float | None = Field(default=None, gt=0)  # the training loss rose above this ceiling
    loss_nan: bool = True  # the training or eval loss is NaN or infinite
    price_above_usd: float | None = Field(default=None, gt=0)  # the price so far (pro rata of steps) is above this


class FinetuneSpec(_Strict):
    """Every parameter of a Together fine-tuning job the spec can set."""

    model: str = Field(min_length=1)
    n_epochs: PositiveInt = 1
    learning_rate: float = Field(default=1e-5, gt=0)
    lora: bool = True
    lora_r: PositiveInt | None = None
    lora_alpha: PositiveInt | None = None
    lora_dropout: float = Field(default=0.0, ge=0, lt=1)
    lora_trainable_modules: str = "all-linear"
    batch_size: PositiveInt | Literal["max"] = "max"
    warmup_ratio: float = Field(default=0.0, ge=0, le=1)
    lr_scheduler: Literal["linear", "cosine"] = "cosine"
    min_lr_ratio: float = Field(default=0.0, ge=0, le=1)
    scheduler_num_cycles: float = Field(default=0.5, gt=0)
    max_grad_norm: float = Field(default=1.0, ge=0)
    weight_decay: float = Field(default=0.0, ge=0)
    train_on_inputs: bool | Literal["auto"] = "auto"
    n_checkpoints: PositiveInt = 1
    n_evals: int = Field(default=0, ge=0)
    max_seq_length: PositiveInt | None = None
    packing: bool = True
    random_seed: int | None = None
    suffix: str | None = Field(default=None, max_length=30, pattern=r"^[A-Za-z0-9._-]+$")
    max_price_usd: float | None = Field(default=None, gt=0)
    wandb_api_key_env: str | None = None
    wandb_project_name: str | None = None
    wandb_name: str | None = None
    poll_deadline_h: float = Field(default=72.0, gt=0)
    # Continue training from an earlier fine-tune: a job id of this daemon (its fine-tune is looked up) or a
    # Together fine-tune id / output model name, either optionally followed by `:<step>`.
    stop_when: StopWhen | None = None
    from_checkpoint: str | None = Field(default=None, min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]*(:\d+)?$")


class Endpoint(_Strict):
    """An OpenAI-compatible chat endpoint for one model; the key is named by env var, never written here."""

    base_url: str = Field(min_length=1)
    api_key_env: str | None = None

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s?#]+", value, re.IGNORECASE):
            raise ValueError("must be an http:// or https:// URL with a host")
        return value


class EvaluateSpec(_Strict):
    """How to evaluate: protocol, models, generation settings and the bound on in-flight requests."""

    protocol: Literal["cookbook", "gold-history", "own-history"] = "gold-history"
    models: list[str] = Field(default_factory=lambda: ["base", "finetuned"], min_length=1)
    base_model: str | None = None
    limit: PositiveInt | None = None
    concurrency: PositiveInt = 16
    max_tokens: PositiveInt = 64
    temperature: float | None = Field(default=0.0, ge=0)
    stop: list[str] | None = None
    request_timeout_s: float = Field(default=60.0, gt=0)
    max_attempts: PositiveInt = 6
    # Items failing for transient reasons are asked again in rounds until this deadline (from the step's start).
    deadline_min: float = Field(default=120.0, gt=0)
    # The share of a model's items that may stay missing at the deadline; above it the step fails (incomplete).
    max_missing_share: float = Field(default=0.0, ge=0, le=1)
    endpoints: dict[str, Endpoint] = Field(default_factory=dict)
    # Where the fine-tuned model is served: `auto` asks Together (serverless when it serves the model, otherwise
    # a dedicated endpoint for the evaluation); the other keys apply to a dedicated endpoint.
    serve: Literal["auto", "serverless", "dedicated"] = "auto"
    hardware: str | None = None  # default: the cheapest available configuration compatible with the model
    replicas: PositiveInt = 1
    inactive_timeout_min: int | None = Field(default=None, ge=0)  # Together stops an idle endpoint after this
    max_endpoint_usd: float | None = Field(default=None, gt=0)  # refuse above it, stop the endpoint on reaching it
    expected_eval_min: float | None = Field(default=None, gt=0)  # expected billed minutes (default: estimated)
    endpoint_start_timeout_min: float = Field(default=30.0, gt=0)  # give up waiting for STARTED after this
    # `batch`: ask through Together's Batch API (up to half price, minutes to hours) instead of one request each.
    mode: Literal["realtime", "batch"] = "realtime"

    @model_validator(mode="after")
    def _batch_on_together(self) -> EvaluateSpec:
        if self.mode == "batch" and self.endpoints:
            raise ValueError("evaluate.mode batch asks Together's Batch API: it cannot use evaluate.endpoints")
        if self.mode == "batch" and self.serve == "dedicated":
            raise ValueError("evaluate.mode batch needs serverless models: it cannot use serve: dedicated")
        return self


# Keys a sweep may not vary: they name or bound the whole sweep, not one variant.
UNSWEPT_KEYS = frozenset({"suffix", "max_price_usd", "poll_deadline_h"})
MAX_VARIANTS = 64


class SweepSpec(_Strict):
    """Several fine-tunes of one dataset: a grid of finetune values (every combination) and/or explicit variants."""

    grid: dict[str, list[Any]] = Field(default_factory=dict)
    variants: list[dict[str, Any]] = Field(default_factory=list)
    max_parallel: PositiveInt = 2
    max_price_usd: float | None = Field(default=None, gt=0)
    metric: Literal["f1", "em"] = "f1"

    def combinations(self) -> list[dict[str, Any]]:
        """Every variant's finetune overrides: the grid's combinations in order, then the explicit variants."""
        combos: list[dict[str, Any]] = [{}] if self.grid else []
        for key, values in self.grid.items():
            combos = [{**combo, key: value} for combo in combos for value in values]
        return [*combos, *self.variants]


def variant_name(overrides: dict[str, Any]) -> str:
    """A readable, path-safe name for a variant, e.g. `learning_rate-2e-05.n_epochs-3`."""
    text = ".".join(f"{key}-{value}" for key, value in overrides.items()) or "default"
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)[:60]


class NotifySpec(_Strict):
    """This job's own webhook (besides FINETUNED_WEBHOOK_URL): the URL is named by a *_WEBHOOK_URL variable."""

    webhook_url_env: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*_WEBHOOK_URL$")
    format: Literal["json", "slack"] = "json"


class JobSpec(_Strict):
    """One job: a dataset, and optionally a fine-tune (or a sweep of them), an evaluation and a webhook to tell
    when it ends."""

    name: str = Field(pattern=NAME_PATTERN)
    dataset: DatasetSpec
    finetune: FinetuneSpec | None = None
    evaluate: EvaluateSpec | None = None
    notify: NotifySpec | None = None
    sweep: SweepSpec | None = None

    @model_validator(mode="after")
    def _sweep_valid(self) -> JobSpec:
        if self.sweep is None:
            return self
        if self.finetune is None:
            raise ValueError("sweep needs a finetune section: its values vary that section's keys")
        combos = self.sweep.combinations()
        if not combos or len(combos) > MAX_VARIANTS:
            raise ValueError(f"sweep must give between 1 and {MAX_VARIANTS} variants (grid and/or variants)")
        for combo in combos:
            if bad := sorted(set(combo) & UNSWEPT_KEYS):
                raise ValueError(f"sweep cannot vary {', '.join(bad)}: it applies to the whole sweep")
            try:
                FinetuneSpec.model_validate({**self.finetune.model_dump(exclude_unset=True), **combo})
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(part) for part in first["loc"])
                raise ValueError(f"sweep variant {variant_name(combo)}: finetune.{where}: {first['msg']}") from None
        names = [variant_name(combo) for combo in combos]
        if len(set(names)) != len(names):
            raise ValueError("sweep lists the same variant twice")
        return self

    def variants(self) -> list[tuple[str, dict[str, Any], JobSpec]]:
        """(name, overrides, spec) of each variant of a sweep: the same job with its finetune values, no sweep."""
        assert self.sweep is not None and self.finetune is not None
        out = []
        for combo in self.sweep.combinations():
            finetune = FinetuneSpec.model_validate({**self.finetune.model_dump(exclude_unset=True), **combo})
            out.append((variant_name(combo), combo, self.model_copy(update={"finetune": finetune, "sweep": None})))
        return out

    @model_validator(mode="after")
    def _models_resolvable(self) -> JobSpec:
        if self.evaluate is None:
            return self
        if "finetuned" in self.evaluate.models and self.finetune is None:
            raise ValueError("evaluate.models names 'finetuned' but the spec has no finetune section")
        if "base" in self.evaluate.models and self.finetune is None and self.evaluate.base_model is None:
            raise ValueError("evaluate.models names 'base' but there is no finetune.model or evaluate.base_model")
        if len(set(self.evaluate.models)) != len(self.evaluate.models):
            raise ValueError("evaluate.models lists a model twice")
        return self

    @property
    def serves_finetune(self) -> bool:
        """The job evaluates its own fine-tune on Together (the `serve` step), not on an `evaluate.endpoints` URL."""
        evaluate = self.evaluate
        if self.finetune is None or evaluate is None:
            return False
        return "finetuned" in evaluate.models and "finetuned" not in evaluate.endpoints

    def resolve_model(self, alias: str, finetuned_model: str | None = None) -> str:
        """Map `base`/`finetuned` to real model names; any other entry is already a model name."""
        if alias == "base":
            if self.evaluate is not None and self.evaluate.base_model:
                return self.evaluate.base_model
            assert self.finetune is not None  # guaranteed by _models_resolvable
            return self.finetune.model
        if alias == "finetuned":
            if not finetuned_model:
                raise SpecError(["evaluate.models: the fine-tuned model is not known (the fine-tune did not finish)"])
            return finetuned_model
        return alias


def parse_spec(data: bytes, filename: str = "<spec>") -> JobSpec:
    """Parse and validate spec bytes; raise SpecError listing every problem with file, key path and line."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError([f"{filename}: not UTF-8 text (byte {exc.start})"]) from exc
    if not text.strip():
        raise SpecError([f"{filename}: the file is empty"])
    raw, lines = _load(text, filename)
    if not isinstance(raw, dict):
        raise SpecError([f"{filename}: the top level must be a mapping of keys, got {type(raw).__name__}"])
    try:
        return JobSpec.model_validate(raw)
    except ValidationError as exc:
        raise SpecError([_describe(err, filename, lines) for err in exc.errors()]) from exc


def _load(text: str, filename: str) -> tuple[Any, dict[tuple[str, ...], int]]:
    if filename.endswith(".json"):
        try:
            return json.loads(text), {}
        except json.JSONDecodeError as exc:
            raise SpecError([f"{filename}: line {exc.lineno}, column {exc.colno}: invalid JSON: {exc.msg}"]) from exc
        except RecursionError as exc:
            raise SpecError([f"{filename}: invalid JSON: nested too deeply"]) from exc
    try:
        _check_bounds(text, filename)
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        return yaml.safe_load(text), _line_index(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        raise SpecError([f"{filename}: {where}invalid YAML: {exc.problem or exc}"]) from exc
    except yaml.YAMLError as exc:
        raise SpecError([f"{filename}: invalid YAML: {exc}"]) from exc


def _check_bounds(text: str, filename: str) -> None:
    """Walk the parser's events (which never expand aliases) and refuse a document over the bounds."""
    aliases = 0
    sizes: dict[str, int] = {}  # anchor -> nodes under it, aliases expanded
    stack: list[list[Any]] = [[0, None]]  # open collections: [nodes so far, anchor]
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            stack.append([1, event.anchor])
            if len(stack) - 1 > MAX_YAML_DEPTH:
                _out_of_bounds(filename, event, f"nesting deeper than {MAX_YAML_DEPTH} levels")
            continue
        if isinstance(event, yaml.CollectionEndEvent):
            count, anchor = stack.pop()
        elif isinstance(event, yaml.AliasEvent):
            aliases += 1
            if aliases > MAX_YAML_ALIASES:
                _out_of_bounds(filename, event, f"more than {MAX_YAML_ALIASES} aliases")
            count, anchor = sizes.get(str(event.anchor), 1), None
        elif isinstance(event, yaml.ScalarEvent):
            count, anchor = 1, event.anchor
        else:
            continue
        if anchor is not None:
            sizes[str(anchor)] = count
        stack[-1][0] += count
        if stack[-1][0] > MAX_YAML_NODES:
            _out_of_bounds(filename, event, f"more than {MAX_YAML_NODES:,} values once its aliases are expanded")


def _out_of_bounds(filename: str, event: yaml.Event, why: str) -> None:
    line = event.start_mark.line + 1 if event.start_mark is not None else "?"
    raise SpecError([f"{filename}: line {line}: refused: the YAML document has {why} (an alias bomb or not a spec)"])


def _line_index(node: yaml.Node | None) -> dict[tuple[str, ...], int]:
    """Map every key path in a YAML document to its 1-based line, so errors can point at the line.

    Iterative, and each node is indexed once (an alias is not followed again), so its size is the document's."""
    index: dict[tuple[str, ...], int] = {}
    seen: set[int] = set()
    todo: list[tuple[yaml.Node | None, tuple[str, ...]]] = [(node, ())]
    while todo:
        current, path = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        children: list[tuple[yaml.Node, yaml.Node]] = []
        if isinstance(current, yaml.MappingNode):
            children = [(key, value) for key, value in current.value]
        elif isinstance(current, yaml.SequenceNode):
            children = [(item, item) for item in current.value]
        for i, (marker, child) in enumerate(children):
            sub = (*path, str(marker.value) if marker is not child else str(i))
            index.setdefault(sub, marker.start_mark.line + 1)
            todo.append((child, sub))
    return index


def _describe(err: Any, filename: str, lines: dict[tuple[str, ...], int]) -> str:
    loc = tuple(str(p) for p in err["loc"] if not str(p).startswith(("function-", "literal[", "int", "constrained")))
    key = ".".join(loc) or "(top level)"
    line = next((lines[loc[:i]] for i in range(len(loc), 0, -1) if loc[:i] in lines), None)
    where = f"line {line}: " if line is not None else ""
    message = "unknown key (not part of the spec schema)" if err["type"] == "extra_forbidden" else err["msg"]
    if err["type"] == "missing":
        message = "required key is missing"
    return f"{filename}: {where}{key}: {message}"
