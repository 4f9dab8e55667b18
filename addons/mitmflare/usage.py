"""Token usage, normalized across providers, from JSON response bodies.

All counts are tokens. ``input_tokens`` is the *uncached* input, as Anthropic reports it; for
OpenAI, whose ``prompt_tokens`` include cached tokens, the cached part is moved to
``cache_read_input_tokens`` (``shared/reference/upstream-apis.md`` sections 4 and 6).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any


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
        return asdict(self)

    def merge_anthropic(self, usage: dict[str, Any]) -> None:
        """Overwrite fields with every non-null value of an Anthropic ``usage`` object
        (``message_start.message.usage``, then the cumulative ``message_delta.usage``)."""
        for key in ("input_tokens", "output_tokens", "cache_read_input_tokens",
                    "cache_creation_input_tokens"):
            value = usage.get(key)
            if isinstance(value, int):
                setattr(self, key, value)
        split = usage.get("cache_creation")
        if isinstance(split, dict):
            five = split.get("ephemeral_5m_input_tokens")
            hour = split.get("ephemeral_1h_input_tokens")
            if isinstance(five, int):
                self.cache_creation_5m_input_tokens = five
            if isinstance(hour, int):
                self.cache_creation_1h_input_tokens = hour

    def merge_openai(self, usage: dict[str, Any]) -> None:
        """Read an OpenAI Chat Completions ``usage`` (prompt/completion tokens) or a Responses
        ``usage`` (input/output tokens); cached tokens are taken out of the input count."""
        prompt = usage.get("prompt_tokens", usage.get("input_tokens"))
        output = usage.get("completion_tokens", usage.get("output_tokens"))
        details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details") or {}
        cached = details.get("cached_tokens") or 0
        written = details.get("cache_write_tokens")
        if isinstance(prompt, int):
            self.input_tokens = prompt - cached - (written or 0)
            self.cache_read_input_tokens = cached
        if isinstance(written, int):
            self.cache_creation_input_tokens = written
        if isinstance(output, int):
            self.output_tokens = output


def usage_from_json(provider: str, body: bytes) -> tuple[Usage | None, str | None]:
    """Usage and model from a non-streamed JSON response body (Anthropic Message, OpenAI chat
    completion, Responses object, embeddings). Returns (None, None) when the body has neither."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None, None
    if not isinstance(data, dict):
        return None, None
    model = data.get("model") if isinstance(data.get("model"), str) else None
    raw = data.get("usage")
    if not isinstance(raw, dict):
        return None, model
    usage = Usage()
    if provider == "anthropic":
        usage.merge_anthropic(raw)
    else:
        usage.merge_openai(raw)
    return usage, model
