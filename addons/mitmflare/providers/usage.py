"""Token usage, normalized across providers, from JSON response bodies.

All counts are tokens. ``input_tokens`` is the *uncached* input, as Anthropic reports it; for
OpenAI, whose ``prompt_tokens`` include cached tokens, the cached part is moved to
``cache_read_input_tokens`` (``shared/reference/upstream-apis.md`` sections 4 and 6).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .wire import count, json_object, text


@dataclass
class Usage:
    """Token counts of one response; None where the upstream did not say."""

    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_read_input_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    cache_creation_5m_input_tokens: int | None = None
    cache_creation_1h_input_tokens: int | None = None

    def as_row(self) -> dict[str, int | None]:
        """The counts by column name (a copy of the fields, cheaper than ``asdict``)."""
        return dict(self.__dict__)

    def merge_anthropic(self, usage: dict[str, Any]) -> None:
        """Overwrite fields with every non-null value of an Anthropic ``usage`` object
        (``message_start.message.usage``, then the cumulative ``message_delta.usage``)."""
        for key in ("input_tokens", "output_tokens", "cache_read_input_tokens",
                    "cache_creation_input_tokens"):
            value = count(usage.get(key))
            if value is not None:
                setattr(self, key, value)
        split = usage.get("cache_creation")
        if isinstance(split, dict):
            five = count(split.get("ephemeral_5m_input_tokens"))
            hour = count(split.get("ephemeral_1h_input_tokens"))
            if five is not None:
                self.cache_creation_5m_input_tokens = five
            if hour is not None:
                self.cache_creation_1h_input_tokens = hour

    def merge_openai(self, usage: dict[str, Any]) -> None:
        """Read an OpenAI Chat Completions ``usage`` (prompt/completion tokens) or a Responses
        ``usage`` (input/output tokens); cached tokens are taken out of the input count."""
        prompt = count(usage.get("prompt_tokens", usage.get("input_tokens")))
        output = count(usage.get("completion_tokens", usage.get("output_tokens")))
        details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details")
        details = details if isinstance(details, dict) else {}
        cached = count(details.get("cached_tokens")) or 0
        written = count(details.get("cache_write_tokens"))
        if prompt is not None:
            self.input_tokens = max(prompt - cached - (written or 0), 0)
            self.cache_read_input_tokens = cached
        if written is not None:
            self.cache_creation_input_tokens = written
        if output is not None:
            self.output_tokens = output


def usage_from_json(wire_format: str, body: bytes) -> tuple[Usage | None, str | None]:
    """Usage and model from a non-streamed JSON response body (Anthropic Message, OpenAI chat
    completion, Responses object, embeddings). Returns (None, None) when the body has neither."""
    data = json_object(body)
    if data is None:
        return None, None
    model = text(data.get("model"))
    raw = data.get("usage")
    if not isinstance(raw, dict):
        return None, model
    usage = Usage()
    if wire_format == "anthropic":
        usage.merge_anthropic(raw)
    else:
        usage.merge_openai(raw)
    return usage, model
