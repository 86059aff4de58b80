"""Argument helpers shared by the CLI's command modules: ``k=v`` options, output formats, and
the error for arguments that parse but do not make sense together."""

from __future__ import annotations

import argparse

import msgspec

from common import durations, wire


class BadArguments(Exception):
    """Arguments argparse accepted but the command cannot use; ``main`` prints the message
    and exits 2, before any request is sent."""


def pairs(flag: str):
    """argparse type for ``k=v`` options, naming the option in its error."""

    def parse(text: str) -> tuple[str, str]:
        key, sep, value = text.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"{flag} must look like KEY=VALUE, got {text!r}")
        return key, value

    return parse


def label_pairs(flag: str):
    """argparse type for ``key=value`` labels: also checks both sides against the API's label
    rules, so a bad label is refused naming the option rather than as a server 400."""
    split = pairs(flag)

    def parse(text: str) -> tuple[str, str]:
        key, value = split(text)
        for part, what, type_, chars in [
            (key, "key", wire.LabelKey, "'.', '_', '-', '/'"),
            (value, "value", wire.LabelValue, "'.', '_', '-'"),
        ]:
            try:
                msgspec.convert(part, type_)
            except msgspec.ValidationError:
                raise argparse.ArgumentTypeError(
                    f"{flag} {text!r}: invalid label {what} {part!r} (letters, digits and "
                    f"{chars}, at most 63, starting and ending with a letter or digit)"
                )
        return key, value

    return parse


def idle_timeout(flag: str, *, off: bool):
    """argparse type for ``--idle-timeout``: a duration (``90s``, ``60m``, ``1h30m``) within
    the API's bounds; with ``off``, also ``off``/``never``/``0`` (as 0: never)."""

    def parse(text: str) -> float:
        if off and text.strip().lower() in ("off", "never", "0"):
            return 0.0
        try:
            seconds = durations.parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{flag}: {exc}")
        if not wire.MIN_IDLE_TIMEOUT_S <= seconds <= wire.MAX_IDLE_TIMEOUT_S:
            raise argparse.ArgumentTypeError(
                f"{flag} {text}: must be between {wire.MIN_IDLE_TIMEOUT_S:g} s and 365 days"
                + (" (or off)" if off else "")
            )
        return seconds

    return parse


def add_output(p: argparse.ArgumentParser, formats: tuple[str, ...] = ("table", "json")) -> None:
    p.add_argument("-o", "--output", choices=formats, default="table")
