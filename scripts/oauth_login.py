#!/usr/bin/env python3
"""Log a Claude subscription account in and add it to the accounts file.

    .venv/bin/python scripts/oauth_login.py NAME            # browser login (PKCE)
    .venv/bin/python scripts/oauth_login.py NAME --access-token sk-ant-oat01-… --refresh-token sk-ant-ort01-…

The browser login prints a URL; open it, approve, and paste the ``code#state`` shown on the
callback page. The tokens are stored in the state database (``--state``, mode 0600) and the
account is added to (or updated in) the accounts file as ``oauth: {from_state: true}``, so no
secret is written to the YAML file. The file's comments and order are kept.

Pooling subscription accounts may breach the provider's terms; that is the operator's
responsibility.
"""

from __future__ import annotations

import argparse
import secrets
import sys
import time
from datetime import datetime
from pathlib import Path

import httpx
from ruamel.yaml import YAML

from mitmflare import oauth
from mitmflare.config import ConfigError, load_accounts
from mitmflare.defaults import ACCOUNTS_PATH, STATE_PATH
from mitmflare.times import iso_utc
from mitmflare.writer import open_state_db


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("name", help="account name (letters, digits, - and _); an existing "
                        "entry of that name is switched to these tokens")
    parser.add_argument("--accounts", default=ACCOUNTS_PATH,
                        help="accounts file to add the account to (the proxy's flare_accounts)")
    parser.add_argument("--state", default=STATE_PATH,
                        help="state database that receives the tokens (the proxy's flare_state)")
    parser.add_argument("--priority", type=int, default=None,
                        help="priority of the account (lower is preferred); kept if omitted")
    parser.add_argument("--access-token", help="use an existing pair instead of logging in "
                        "(e.g. from `claude setup-token` or ~/.claude/.credentials.json)")
    parser.add_argument("--refresh-token", help="the refresh token of that pair")
    parser.add_argument("--expires-at", help="ISO 8601 expiry of --access-token, if known")
    parser.add_argument("--token-url", default=oauth.DEFAULT_TOKEN_URL,
                        help="OAuth token endpoint (the proxy's flare_oauth_token_url)")
    parser.add_argument("--authorize-url", default=oauth.AUTHORIZE_URL,
                        help="OAuth authorization page opened in the browser")
    parser.add_argument("--client-id", default=oauth.DEFAULT_CLIENT_ID,
                        help="OAuth client id (the proxy's flare_oauth_client_id)")
    parser.add_argument("--redirect-uri", default=oauth.REDIRECT_URI,
                        help="OAuth redirect URI registered for that client id")
    args = parser.parse_args(argv)

    try:
        if args.access_token or args.refresh_token:
            expires = datetime.fromisoformat(args.expires_at).timestamp() if args.expires_at else None
            tokens = oauth.TokenSet(args.access_token, args.refresh_token, expires, None)
        else:
            tokens = browser_login(args)
    except (oauth.RefreshError, httpx.HTTPError, ValueError) as exc:
        print(f"login failed: {exc}", file=sys.stderr)
        return 1

    open_state_db(args.state).conn.close()  # creates the file (0600) and its tables
    oauth.save_tokens(args.state, args.name, tokens)
    add_account(Path(args.accounts), args.name, args.priority)
    expiry = iso_utc(tokens.expires_at) or "unknown"
    print(f"account {args.name}: tokens stored in {args.state} (access token expires {expiry}); "
          f"{args.accounts} updated.")
    return report(args.accounts, args.name)


def report(accounts: str, name: str) -> int:
    """Validate the accounts file as the proxy will, and say what the proxy will do."""
    try:
        loaded = load_accounts(accounts)
    except ConfigError as exc:
        print(f"but the proxy cannot read {accounts}: {exc}", file=sys.stderr)
        return 1
    mine = [e for e in loaded.errors if f"account {name}:" in e]
    for error in loaded.errors:
        print(f"{'error' if error in mine else 'note: another entry is left out'}: {error}",
              file=sys.stderr)
    if mine:
        return 1
    print(f"A running proxy (flare_accounts={accounts}) serves {name} within 2 s, with these "
          f"tokens; a 'needs_reauth' mark on it is cleared. A proxy started later loads it too.")
    return 0


def browser_login(args: argparse.Namespace) -> oauth.TokenSet:
    verifier, challenge = oauth.pkce_pair()
    state = secrets.token_urlsafe(24)
    print("Open this URL, approve access, then paste the code shown (code#state):")
    print(oauth.authorize_url(args.authorize_url, args.client_id, args.redirect_uri,
                              challenge, state), flush=True)
    pasted = sys.stdin.readline().strip()
    code, _, returned_state = pasted.partition("#")
    if not code:
        raise ValueError("no code pasted")
    if returned_state != state:
        raise ValueError("the pasted state does not match this login (start again)")
    response = httpx.post(args.token_url, timeout=oauth.REFRESH_TIMEOUT_S, json={
        "grant_type": "authorization_code", "code": code, "redirect_uri": args.redirect_uri,
        "client_id": args.client_id, "code_verifier": verifier, "state": state})
    if response.status_code != 200:
        raise oauth.token_error(response)
    return oauth.token_set_from_answer(response.json(), None, "", time.time())


def add_account(path: Path, name: str, priority: int | None) -> None:
    """Add ``name`` with ``oauth: {from_state: true}``, or switch an existing entry to it,
    keeping the file's comments and order."""
    yaml = YAML()
    yaml.preserve_quotes = True
    data = yaml.load(path.read_text(encoding="utf-8")) if path.exists() else None
    if data is None:
        data = yaml.load("accounts: []\n")
    if data.get("accounts") is None:
        data["accounts"] = []
    entry = next((a for a in data["accounts"] if a.get("name") == name), None)
    if entry is None:
        entry = yaml.load(f"name: {name}\nprovider: anthropic\n")
        data["accounts"].append(entry)
    entry.pop("api_key", None)
    entry["oauth"] = yaml.load("{from_state: true}")
    if priority is not None:
        entry["priority"] = priority
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".tmp")
    with partial.open("w", encoding="utf-8") as fh:
        yaml.dump(data, fh)
    partial.replace(path)  # atomic: a running proxy never reads half a file


if __name__ == "__main__":
    sys.exit(main())
