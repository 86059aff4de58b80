"""``nbfleet-router run --config router.toml``: serve notebooks' stable URLs
(:mod:`router.app`) with the settings of :class:`common.config.RouterConfig`
(``NBFLEET_ROUTER_<SETTING>`` overrides the file)."""

from __future__ import annotations

import argparse
import logging
import sys

from common.auth import read_secret
from common.config import ConfigError, RouterConfig, load, split_hostport
from common.http_server import serve
from router.app import create_app
from router.routes import Routes

ENV_PREFIX = "NBFLEET_ROUTER_"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nbfleet-router",
        description="nbfleet router: notebooks' URLs, served while no scheduler answers",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="serve /notebooks/{id}/...")
    run.add_argument("--config", help="router TOML file (default: settings from the environment)")
    run.add_argument("--log-level", default="INFO", help="INFO (default), DEBUG, WARNING")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        config = load(RouterConfig, args.config, env_prefix=ENV_PREFIX)
        host, port = split_hostport(config.listen)
    except ConfigError as exc:
        print(f"nbfleet-router: {exc}", file=sys.stderr)
        return 2
    try:
        token = read_secret(config.token_file).decode()
    except (OSError, ValueError) as exc:
        print(
            f"nbfleet-router: cannot read the router token from {config.token_file} ({exc}); "
            "copy it from the scheduler (`nbfleet-scheduler router-token --config ...`)",
            file=sys.stderr,
        )
        return 2
    routes = Routes(
        config.scheduler_url,
        token,
        lookup_ttl_s=config.lookup_ttl_s,
        outage_grace_s=config.outage_grace_s,
    )
    serve(create_app(routes), host, port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
