"""What the operator edits: the accounts file (loading, validating, editing from the command
line), ``.env`` files, the options' defaults and value types, Redis URLs.

May import ``providers.presets`` (the providers an account may name) and nothing else of
mitmflare.
"""
