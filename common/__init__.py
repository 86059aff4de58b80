"""What the scheduler, the agents and the CLI share: wire types, states, signing, errors, config."""

__version__ = "0.1.0"
