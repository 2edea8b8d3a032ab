"""The job spec: a pydantic model of the file a user drops into inbox/, parsed from YAML or JSON with located errors."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from daemon.errors import SpecError

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
COOKBOOK_SYSTEM_PROMPT = "Read the story and extract answers for the questions.\nStory: {story}"

PositiveInt = Annotated[int, Field(gt=0)]


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


class Endpoint(_Strict):
    """An OpenAI-compatible chat endpoint for one model; the key is named by env var, never written here."""

    base_url: str = Field(min_length=1)
    api_key_env: str | None = None


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
    endpoints: dict[str, Endpoint] = Field(default_factory=dict)


class NotifySpec(_Strict):
    """This job's own webhook (besides FINETUNED_WEBHOOK_URL): the URL is named by a *_WEBHOOK_URL variable."""

    webhook_url_env: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*_WEBHOOK_URL$")
    format: Literal["json", "slack"] = "json"


class JobSpec(_Strict):
    """One job: a dataset, and optionally a fine-tune, an evaluation and a webhook to tell when it ends."""

    name: str = Field(pattern=NAME_PATTERN)
    dataset: DatasetSpec
    finetune: FinetuneSpec | None = None
    evaluate: EvaluateSpec | None = None
    notify: NotifySpec | None = None

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
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        return yaml.safe_load(text), _line_index(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        raise SpecError([f"{filename}: {where}invalid YAML: {exc.problem or exc}"]) from exc
    except yaml.YAMLError as exc:
        raise SpecError([f"{filename}: invalid YAML: {exc}"]) from exc


def _line_index(node: yaml.Node | None, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], int]:
    """Map every key path in a YAML document to its 1-based line, so errors can point at the line."""
    index: dict[tuple[str, ...], int] = {}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            sub = (*path, str(key.value))
            index[sub] = key.start_mark.line + 1
            index.update(_line_index(value, sub))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            sub = (*path, str(i))
            index[sub] = item.start_mark.line + 1
            index.update(_line_index(item, sub))
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
