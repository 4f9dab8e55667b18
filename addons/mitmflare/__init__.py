"""mitmflare: a load-balancing proxy for the Anthropic and OpenAI APIs, as mitmproxy addons."""

__version__ = "0.1.0"
