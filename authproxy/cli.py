"""The command line: a thin layer over config, the server and the user file."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from . import __version__
from .config import Config, load_config
from .errors import ConfigError, UserFileError
from .htpasswd import NEW_HASH_SCHEMES

EXIT_CONFIG = 2


def _load(args: argparse.Namespace) -> Config:
    path = args.config or os.environ.get("AUTHPROXY_CONFIG") or None
    return load_config(path, listen=getattr(args, "listen", None))


def _config_problems(args: argparse.Namespace) -> tuple[Config | None, list[str]]:
    """The config, and every problem with it and the files it names."""
    try:
        config = _load(args)
    except ConfigError as exc:
        return None, exc.problems
    problems = []
    if config.basic.users_file:
        from .htpasswd.userstore import UserStore

        try:  # as serve loads them
            UserStore(config.basic.users_file, config.basic.groups_file)
        except UserFileError as exc:
            problems.append(str(exc))
    return config, problems


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        config = _load(args)
    except ConfigError as exc:
        return _report(exc.problems)
    if config.worker_count > 1:  # the supervisor checks the files once, before any worker
        _, problems = _config_problems(args)
        if problems:
            return _report(problems)
    from .obs.logs import setup_logging

    setup_logging(config.log)
    if config.jwt.enabled and config.jwt.insecure_skip_issuer_and_audience:
        logging.getLogger("authproxy.cli").warning(
            "jwt.insecure_skip_issuer_and_audience is on: tokens are checked for neither iss "
            "nor aud, so any token signed by a key in the set passes, whoever it was issued to",
            extra={"event": "insecure_config", "key": "jwt.insecure_skip_issuer_and_audience"})
    if config.worker_count > 1:
        from .workers.supervisor import supervise

        return supervise(config)
    from .http.server import serve

    try:
        return serve(config)
    except UserFileError as exc:  # the app loads the user table once, before it serves
        return _report([str(exc)])


def cmd_check_config(args: argparse.Namespace) -> int:
    _, problems = _config_problems(args)
    if problems:
        return _report(problems)
    print("configuration OK")
    return 0


def _report(problems: Sequence[str]) -> int:
    print("authproxy: configuration problems:", file=sys.stderr)
    for problem in problems:
        print(f"  - {problem}", file=sys.stderr)
    return EXIT_CONFIG


def _read_password(args: argparse.Namespace) -> bytes:
    if args.password_stdin:
        data = sys.stdin.buffer.read()
        return data.removesuffix(b"\n")
    import getpass  # (not loaded by `serve`)

    first = getpass.getpass("New password: ")
    if getpass.getpass("Re-type new password: ") != first:
        raise ValueError("passwords do not match")
    return first.encode()


def cmd_user(args: argparse.Namespace) -> int:
    from .htpasswd.userfile import add_user, delete_user, list_users

    try:
        if args.action == "list":
            for user in list_users(args.file):
                print(user)
        elif args.action == "delete":
            if not delete_user(args.file, args.user):
                print(f"authproxy: user {args.user!r} not found", file=sys.stderr)
                return 1
            print(f"Deleting password for user {args.user}")
        else:
            replaced = add_user(args.file, args.user, _read_password(args), args.scheme)
            verb = "Updating" if replaced else "Adding"
            print(f"{verb} password for user {args.user}")
    except (OSError, ValueError, UserFileError) as exc:
        print(f"authproxy: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_dev_certs(args: argparse.Namespace) -> int:
    from .dev.devcerts import write_dev_certs

    paths = write_dev_certs(args.dir, args.name or ())
    print(f"wrote {paths['cert']} and {paths['key']}"
          " (for nginx: ssl_certificate / ssl_certificate_key)")
    print(f"CA certificate: {paths['ca']}")
    print(f"trust it for curl with: curl --cacert {paths['ca']} https://localhost/...")
    return 0


def cmd_dev_issuer(args: argparse.Namespace) -> int:
    from .dev import devissuer

    key = devissuer.load_or_create_key(args.dir)
    if args.action == "token":
        try:
            ttl = devissuer.parse_ttl(args.ttl)
        except ValueError as exc:
            print(f"authproxy: --ttl: {exc}", file=sys.stderr)
            return 2
        issuer = args.issuer if args.issuer is not None else devissuer.recorded_issuer(args.dir)
        audience = devissuer.DEFAULT_AUDIENCE if args.aud is None else args.aud
        print(devissuer.mint(
            key, issuer=issuer, subject=args.sub, ttl=ttl, audience=audience,
            scopes=[s for v in args.scope or () for s in v.replace(",", " ").split()],
            groups=[g for v in args.group or () for g in v.split(",") if g],
        ))
        return 0
    from aiohttp import web

    from .listen import parse_listen

    address = parse_listen(args.listen)
    if address.is_unix:  # a token issuer's URL must be one a browser or curl can reach
        print("authproxy: dev-issuer --listen: HOST:PORT, not a unix socket", file=sys.stderr)
        return 2
    issuer = f"http://{address}"
    devissuer.record_issuer(args.dir, issuer)
    print(f"dev issuer {issuer}: JWKS at {issuer}/.well-known/jwks.json", flush=True)
    web.run_app(devissuer.create_issuer_app(key, issuer), host=address.host, port=address.port,
                print=None, access_log=None)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .dev.demo import main as demo

    return demo(args.dir, args.check)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="authproxy", description=__doc__)
    parser.add_argument("--version", action="version", version=f"authproxy {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the decision service")
    serve.add_argument("--config", help="TOML config file (default: $AUTHPROXY_CONFIG)")
    serve.add_argument("--listen", action="append", metavar="ADDR",
                       help="HOST:PORT, [V6]:PORT or unix:/path; repeatable; "
                            "replaces server.listen")
    serve.set_defaults(func=cmd_serve)

    check = commands.add_parser("check-config", help="validate the config and the files it names")
    check.add_argument("--config", help="TOML config file (default: $AUTHPROXY_CONFIG)")
    check.set_defaults(func=cmd_check_config)

    user = commands.add_parser("user", help="manage an htpasswd file")
    actions = user.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", help="add a user or replace its password")
    add.add_argument("file")
    add.add_argument("user")
    add.add_argument("--password-stdin", action="store_true",
                     help="read the password from standard input (one trailing newline dropped)")
    add.add_argument("--scheme", choices=NEW_HASH_SCHEMES, default="bcrypt")
    delete = actions.add_parser("delete", help="remove a user")
    delete.add_argument("file")
    delete.add_argument("user")
    listing = actions.add_parser("list", help="list the users")
    listing.add_argument("file")
    user.set_defaults(func=cmd_user)

    certs = commands.add_parser("dev-certs",
                                help="write a local CA and server certificate (trustme)")
    certs.add_argument("dir")
    certs.add_argument("--name", action="append",
                       help="a DNS name or IP for the certificate; repeatable (default: localhost)")
    certs.set_defaults(func=cmd_dev_certs)

    issuer = commands.add_parser("dev-issuer", help="a local token issuer for trying Bearer")
    issuer_actions = issuer.add_subparsers(dest="action", required=True)
    serve_issuer = issuer_actions.add_parser("serve", help="serve the JWKS over HTTP")
    token = issuer_actions.add_parser("token", help="print a signed token")
    for sub in (serve_issuer, token):
        sub.add_argument("--dir", default=".dev-issuer",
                         help="where the signing key is kept (default: .dev-issuer)")
    serve_issuer.add_argument("--listen", default="127.0.0.1:9280", metavar="HOST:PORT")
    token.add_argument("--sub", required=True, help="the subject (user)")
    token.add_argument("--scope", action="append", help="scopes, space or comma separated")
    token.add_argument("--group", action="append", help="groups, comma separated")
    token.add_argument("--aud", help="audience (default: authproxy, as the demo requires)")
    token.add_argument("--ttl", default="1h", help="lifetime: 3600, 90s, 15m, 1h, 2d")
    token.add_argument("--issuer", help="iss claim (default: the URL `serve` last used)")
    issuer.set_defaults(func=cmd_dev_issuer)

    demo = commands.add_parser("demo", help="authproxy behind nginx over TLS, on loopback")
    demo.add_argument("--dir", default=".demo", help="working directory (default: .demo)")
    demo.add_argument("--check", action="store_true",
                      help="run the printed curl lines, report, and exit (0 if all pass)")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))
