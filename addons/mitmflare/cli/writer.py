"""``mitmflare writer``: the one process that writes the rows of every mitmflare process
sharing a Redis (``flare_redis``) into the analytics database (see
:mod:`mitmflare.storage.stream_writer`). ``mitmflare run`` starts it when Redis is set."""

from typing import Annotated

import typer

from .options import DB_DEFAULT, STATE_DEFAULT, Db, State, fail


def writer(redis: Annotated[str, typer.Option(
               envvar="MITMFLARE_REDIS_URL", show_default="none",
               help="Redis URL the proxies share (their flare_redis).")] = "",
           db: Db = DB_DEFAULT, state: State = STATE_DEFAULT,
           retention_days: Annotated[float, typer.Option(
               min=0, help="Delete requests, attempts and account events older than this many "
                           "days, hourly (0: keep forever; the proxies' "
                           "flare_retention_days).")] = 0.0,
           payload_retention_days: Annotated[float, typer.Option(
               min=0, help="Delete captured payloads older than this many days, hourly (the "
                           "proxies' flare_payload_retention_days).")] = 7.0,
           request_log: Annotated[bool, typer.Option(
               "--request-log", help="Log one line per written request (the proxies' "
                                     "flare_request_log).")] = False) -> None:
    """Write the rows every proxy on this Redis appends to its stream into one database.

    One writer is active at a time (a lease in Redis); another started meanwhile waits and
    takes over when it stops. Rows are acknowledged once committed, each written once.
    Ctrl-C or SIGTERM: commits what it read, then ends.

    Example: MITMFLARE_REDIS_URL=redis://127.0.0.1:6379/0 mitmflare writer --db mitmflare.db
    """
    import logging

    from ..config.redis_url import SCHEMES
    from ..storage import stream_writer

    if redis.partition("://")[0] not in SCHEMES:
        fail("mitmflare writer needs --redis (or MITMFLARE_REDIS_URL): a "
             + ", ".join(s + "://" for s in SCHEMES) + " URL")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    raise typer.Exit(stream_writer.main(redis, db, state, {
        "retention_days": retention_days, "payload_retention_days": payload_retention_days,
        "request_log": request_log}))
