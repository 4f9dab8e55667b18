"""What each ``provider:`` value of the accounts file means, and model mapping.

A preset only fills in defaults: the wire format the upstream speaks, its base URL, how the
credential is sent, and the ``genai-prices`` provider id used for cost. Base URLs are written
as the provider's own SDK takes them: Anthropic-style without ``/v1`` (the client's path
``/v1/messages`` is appended), OpenAI-compatible ones with their version segment (the client's
leading ``/v1`` is replaced by it, e.g. ``https://openrouter.ai/api/v1`` +
``/chat/completions``).

Sources (checked 2026-11 with public docs; see README "Providers"): z.ai's Claude Code guide
(``https://api.z.ai/api/anthropic``, token sent as ``ANTHROPIC_AUTH_TOKEN``, i.e. Bearer);
MiniMax's Anthropic API docs (``https://api.minimax.io/anthropic``, ``ANTHROPIC_API_KEY``,
i.e. ``x-api-key``); OpenRouter's API docs (``https://openrouter.ai/api/v1``, Bearer); NanoGPT's
docs (``https://nano-gpt.com/api/v1``, Bearer); the ``openai/codex`` CLI's source for Codex
(``https://chatgpt.com/backend-api/codex`` + ``/responses``, see :mod:`.codex`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ANTHROPIC, OPENAI, CODEX = "anthropic", "openai", "codex"  # wire formats
"""``codex``: the ChatGPT backend's Responses endpoint (:mod:`.codex`), an OpenAI format that
takes only streamed Responses requests."""
X_API_KEY, BEARER = "x-api-key", "bearer"


@dataclass(frozen=True)
class Preset:
    """``wire``: format the upstream speaks. ``base_url``: default upstream (None: the account
    must set ``base_url``). ``auth``: ``x-api-key`` or ``bearer``. ``price_provider``: the
    genai-prices provider id (None: genai-prices finds the model's provider by itself).
    ``versioned_base``: the base URL carries the API version (OpenAI SDK style)."""

    wire: str
    base_url: str | None
    auth: str
    price_provider: str | None
    versioned_base: bool = False


PRESETS: dict[str, Preset] = {
    "anthropic": Preset(ANTHROPIC, "https://api.anthropic.com", X_API_KEY, "anthropic"),
    "openai": Preset(OPENAI, "https://api.openai.com", BEARER, "openai"),
    "anthropic-compatible": Preset(ANTHROPIC, None, X_API_KEY, None),
    "openai-compatible": Preset(OPENAI, None, BEARER, None, versioned_base=True),
    "zai": Preset(ANTHROPIC, "https://api.z.ai/api/anthropic", BEARER, "zai"),
    "minimax": Preset(ANTHROPIC, "https://api.minimax.io/anthropic", X_API_KEY, "minimax"),
    "openrouter": Preset(OPENAI, "https://openrouter.ai/api/v1", BEARER, "openrouter",
                         versioned_base=True),
    "nanogpt": Preset(OPENAI, "https://nano-gpt.com/api/v1", BEARER, None, versioned_base=True),
    "codex": Preset(CODEX, "https://chatgpt.com/backend-api/codex", BEARER, "openai",
                    versioned_base=True),
}
OAUTH_PROVIDERS = ("anthropic", "codex")
"""Providers whose accounts may log in with OAuth (``oauth:``); ``codex`` accounts must."""

_FAMILY = re.compile(r"(?:^|-)(opus|sonnet|haiku)(?:-|$)")


def family(model: str) -> str | None:
    """``opus`` / ``sonnet`` / ``haiku`` for a standard Claude model name
    (``claude-sonnet-4-5``, ``claude-3-5-haiku-20241022``, …), else None."""
    if not model.startswith("claude"):
        return None
    match = _FAMILY.search(model)
    return match.group(1) if match else None


def map_model(models: dict[str, str] | None, default: str | None, model: str | None) -> str | None:
    """The upstream model for the client's ``model``: an exact entry of ``models`` first, then
    its Claude family (``opus``/``sonnet``/``haiku``), then ``default``. A model that is
    already one of the mapping's upstream names (``glm-4.6``) passes as it is, and so does any
    model without a mapping. None: this account cannot serve the model."""
    if not models:
        return default or model
    if model is None:
        return default
    if model in models:
        return models[model]
    if model in models.values():
        return model
    kind = family(model)
    if kind and kind in models:
        return models[kind]
    return default
