"""`genqueue keys`: create, list and revoke API keys, straight in SQL (an operator's command, no API call).

Only a key's SHA-256 is stored, so a secret is printed once, at creation. A revoked key is refused by every
API process within ``GENQUEUE_AUTH_CACHE_S`` seconds (the time a process may trust a key it has checked);
the moderators' console re-checks on every request, so its sessions end at once.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any


def add_parser(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    keys = sub.add_parser("keys", help="API keys: create, list, revoke",
                          description="create prints the secret once; revoke takes a key's id, the first 10 "
                                      "characters of its secret, or its name (a name several keys share means "
                                      "the live one)")
    keys.add_argument("action", choices=["create", "list", "revoke"])
    keys.add_argument("key", nargs="?", help="revoke: the key's id, the first 10 characters of its secret, or its name")
    keys.add_argument("--name", help="create: a name for people (need not be unique)")
    keys.add_argument("--role", help="create: client, moderator or admin")
    keys.add_argument("--trusted", action="store_true", help="create: a client key that may submit review=none")
    keys.add_argument("--review-policy", choices=["all", "flagged", "none"],
                      help='create: what review="auto" means for this key\'s jobs (default: the model\'s or global policy)')
    keys.add_argument("--all", action="store_true", help="list: revoked keys too")
    keys.add_argument("--json", action="store_true", help="list: one JSON object per key and line")
    common(keys)
    keys.set_defaults(func=cmd_keys)


def cmd_keys(args: argparse.Namespace) -> int:
    from genqueue.cli import _fail, _migrated_db, _ready, _settings

    problem = _misplaced(args) or (_create_args(args) if args.action == "create" else None)
    if args.action == "revoke" and not args.key:
        problem = "revoke needs the key: its id, the first 10 characters of its secret, or its name"
    if problem:
        return _fail(problem)
    settings = _ready(_settings(args), "keys")
    db = _migrated_db(settings)
    try:
        with db.session() as s:
            if args.action == "create":
                return _create(s, args)
            if args.action == "list":
                return _list(s, args)
            return _revoke(s, args.key, settings.auth_cache_s)
    finally:
        db.dispose()


_ONLY = {"create": ("name", "role", "trusted", "review_policy"), "list": ("all", "json"), "revoke": ("key",)}


def _misplaced(args: argparse.Namespace) -> str | None:
    """An argument given to an action that does not take it: refused rather than silently ignored."""
    for name in (n for names in _ONLY.values() for n in names if n not in _ONLY[args.action]):
        if getattr(args, name) not in (None, False):
            shown = "the key argument" if name == "key" else "--" + name.replace("_", "-")
            return f"keys {args.action} does not take {shown}"
    return None


def _create_args(args: argparse.Namespace) -> str | None:
    from genqueue.enums import Role

    if not args.name or not args.role:
        return "create needs --name and --role"
    if args.role not in {r.value for r in Role}:
        return f"unknown role {args.role!r}; choose client, moderator or admin"
    return None


def _create(s: Any, args: argparse.Namespace) -> int:
    from genqueue.enums import Role
    from genqueue_api.auth import create_key

    key, secret = create_key(s, args.name, Role(args.role), trusted=args.trusted, review_policy=args.review_policy)
    print(f"created {key.role} key {key.name!r} (id {key.id}); the secret is shown once:")
    print(secret)
    return 0


def _list(s: Any, args: argparse.Namespace) -> int:
    from genqueue_api.auth import list_keys

    for k in list_keys(s, include_revoked=args.all):
        row = {"id": k.id, "name": k.name, "role": k.role, "prefix": k.prefix, "trusted": k.trusted,
               "review_policy": k.review_policy, "created_at": k.created_at.isoformat(),
               "revoked_at": k.revoked_at.isoformat() if k.revoked_at else None}
        if args.json:
            print(json.dumps(row))
        else:
            state = f"revoked {row['revoked_at']}" if k.revoked_at else "live"
            extra = " trusted" if k.trusted else ""
            print(f"{k.id}  {k.prefix}…  {k.role:<9} {k.name!r}{extra}  created {row['created_at']}  {state}")
    return 0


def _revoke(s: Any, ref: str, cache_s: float) -> int:
    from genqueue.cli import _fail
    from genqueue_api.auth import KeyNotFound, revoke_key

    try:
        key, already = revoke_key(s, ref)
    except KeyNotFound as e:
        return _fail(str(e))
    if already and key.revoked_at is not None:
        print(f"key {key.name!r} (id {key.id}) was already revoked at {key.revoked_at.isoformat()}")
    else:
        print(f"revoked {key.role} key {key.name!r} (id {key.id}); API processes refuse it within their "
              f"GENQUEUE_AUTH_CACHE_S ({cache_s:g} s here)")
    return 0
