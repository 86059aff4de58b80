"""``nbfleet-agent run --config agent.toml``: the GPU-host daemon.

``nbfleet-agent workspace push|restore|list|gc ...``: operator access to workspace snapshots
(:mod:`agent.workspace.cli`).

Settings come from the TOML file and ``NBFLEET_AGENT_<SETTING>`` overrides; ``host_id`` defaults
to the machine's short hostname. SIGTERM / SIGINT stop the agent but never the notebooks.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import socket
import sys

from agent.workspace import cli as workspace_cli
from common.auth import read_secret
from common.config import AgentConfig, ConfigError, load

log = logging.getLogger("agent")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nbfleet-agent", description="nbfleet GPU-host agent")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the agent until SIGTERM")
    run.add_argument("--config", required=False, default=None, help="path to agent.toml")
    run.add_argument("--log-level", default="INFO")
    workspace_cli.add_parser(commands)
    return parser


async def _run(config: AgentConfig, host_id: str, secret: bytes) -> None:
    from agent.app import build_agent  # the daemon's dependencies; workspace commands skip them

    agent = build_agent(config, host_id=host_id, secret=secret)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    await agent.start()
    try:
        await stopping.wait()
    finally:
        log.info("host=%s stopping (notebooks keep running)", host_id)
        await agent.stop()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command == "workspace":
        return workspace_cli.run(args)
    try:
        config = load(AgentConfig, args.config, env_prefix="NBFLEET_AGENT_")
    except ConfigError as exc:
        print(f"nbfleet-agent: {exc}", file=sys.stderr)
        return 2
    host_id = config.host_id or socket.gethostname().split(".")[0]
    try:
        secret = read_secret(config.secret_file)
    except (OSError, ValueError) as exc:
        print(f"nbfleet-agent: cannot read secret_file: {exc}", file=sys.stderr)
        return 2
    if config.metrics_token_file:
        try:
            read_secret(config.metrics_token_file)
        except (OSError, ValueError) as exc:
            print(f"nbfleet-agent: cannot read metrics_token_file: {exc}", file=sys.stderr)
            return 2
    asyncio.run(_run(config, host_id, secret))
    return 0


if __name__ == "__main__":
    sys.exit(main())
