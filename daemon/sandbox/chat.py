"""Sandbox chat answers: deterministic, extractive for CoQA-style prompts (a story after "Story:", then questions).

The base model answers verbosely (the whole best-matching story sentence); a completed sandbox fine-tune answers
with a few words of that sentence, so a fine-tuned model scores visibly better on F1/EM, the same way every time.
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
from typing import Any

STORY_MARKER = "Story:"
SHORT_ANSWER_WORDS = 3
_YES_NO_TEXT = "is are was were do does did can could has have had will would should shall may might am"
_STOPWORDS_TEXT = """a an the and or but of to in on at by for with from into onto over under about as is are was were
be been being am do does did doing have has had having it its it's this that these those there here he she they we you i
me him her them us my his their our your what who whom whose which when where why how not no yes so then than too very
just also any some all each every one ones s t can could would should will shall may might must up down out off again
once"""
YES_NO_STARTS = frozenset(_YES_NO_TEXT.split())
STOPWORDS = frozenset(_STOPWORDS_TEXT.split())
_WORD = re.compile(r"[A-Za-z0-9']+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


def text_of(content: Any) -> str:
    """The text of a message's content (a string, or OpenAI-style content parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


def approx_tokens(text: str) -> int:
    """Token count by the sandbox's formula (4 characters per token, at least 1)."""
    return max(1, math.ceil(len(text) / 4))


def simulate_answer(messages: list[dict[str, Any]], *, fine_tuned: bool, model: str) -> str:
    """The sandbox model's reply to `messages`."""
    story = _story(messages)
    question = next((text_of(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), "")
    if story is None or not question.strip():
        digest = hashlib.sha256(f"{model}\n{question}".encode()).hexdigest()[:8]
        return f"Simulated reply {digest} from {model} to: {question.strip()[:200]}"
    sentence = best_sentence(story, question)
    if not fine_tuned:
        return f"According to the story, {sentence}"
    return short_answer(sentence, question)


def _story(messages: list[dict[str, Any]]) -> str | None:
    for message in messages:
        text = text_of(message.get("content"))
        if STORY_MARKER in text:
            return text.split(STORY_MARKER, 1)[1].strip()
    return None


@functools.lru_cache(maxsize=65536)
def _stem(word: str) -> str:
    """A crude stem, enough to match "named"/"name", "lives"/"lived", "dog's"/"dog"."""
    word = word.lower().removesuffix("'s").rstrip("'")
    for ending in ("ing", "ed", "es", "s"):
        if word.endswith(ending) and len(word) - len(ending) >= 3:
            word = word[: -len(ending)]
            break
    return word[:-1] if word.endswith("e") and len(word) > 3 else word


def _content_stems(text: str) -> set[str]:
    return {_stem(w) for w in _WORD.findall(text) if w.lower() not in STOPWORDS}


@functools.lru_cache(maxsize=1024)
def _sentences(story: str) -> tuple[tuple[str, frozenset[str]], ...]:
    """The story's sentences with their content stems; cached, since every turn of a story asks about the same one."""
    return tuple((s.strip(), frozenset(_content_stems(s))) for s in _SENTENCE_END.split(story) if s.strip())


def best_sentence(story: str, question: str) -> str:
    """The story sentence sharing the most content words with the question (the earliest on ties)."""
    sentences = _sentences(story)
    if not sentences:
        return story.strip()
    wanted = _content_stems(question)
    scores = [len(wanted & stems) for _, stems in sentences]
    return sentences[scores.index(max(scores))][0]


def short_answer(sentence: str, question: str) -> str:
    """A few words of `sentence`: yes/no for yes/no questions, else the content words next to the question's."""
    words = _WORD.findall(question.lower())
    wanted = _content_stems(question)
    if words and words[0] in YES_NO_STARTS:
        return "yes" if wanted & _content_stems(sentence) else "no"
    tokens = _WORD.findall(sentence)
    matched = [i for i, t in enumerate(tokens) if _stem(t) in wanted]
    candidates = [i for i, t in enumerate(tokens) if t.lower() not in STOPWORDS and _stem(t) not in wanted]
    if not candidates:
        return " ".join(tokens[:SHORT_ANSWER_WORDS])
    after = [i for i in candidates if matched and i > max(matched)]
    start = after[0] if after else candidates[0]
    span = tokens[start : start + SHORT_ANSWER_WORDS]
    while len(span) > 1 and (span[-1].lower() in STOPWORDS or _stem(span[-1]) in wanted):
        span.pop()
    return " ".join(span)
