"""Options from ``FAKESMTP_<COMMAND>_<OPTION>`` variables: errors that name them, typos flagged.

A CI service container configures fakesmtp through the environment only, so a bad value must be
reported under the name the user wrote (``FAKESMTP_SERVE_PORT=abc``), not as ``'--port'``, and a
misspelt variable, which the shell and click would both silently ignore, gets a warning with
the closest real name.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from typing import Any

import click
from click.core import ParameterSource

from .suggest import closest

PREFIX = "FAKESMTP"
# Variables read outside click: the API token every command that talks to a server accepts,
# and the Chromium the page test drives.
OTHER_VARIABLES = frozenset({"FAKESMTP_API_TOKEN", "FAKESMTP_CHROMIUM"})


def variable_of(ctx: click.Context, param: click.Parameter) -> str | None:
    """The environment variable an option reads (its own, or the automatic one), if any."""
    if not isinstance(param, click.Option) or param.name is None:
        return None
    if param.envvar:
        return param.envvar if isinstance(param.envvar, str) else param.envvar[0]
    if ctx.auto_envvar_prefix:
        return f"{ctx.auto_envvar_prefix}_{param.name.upper()}"
    return None


def from_environment(ctx: click.Context, name: str) -> str | None:
    """``FAKESMTP_SERVE_PORT`` when option ``name`` took its value from there, else None."""
    if ctx.get_parameter_source(name) is not ParameterSource.ENVIRONMENT:
        return None
    for param in ctx.command.params:
        if param.name == name:
            return variable_of(ctx, param)
    return None


def option_label(ctx: click.Context, name: str, value: Any) -> str:
    """How to name an option's value in an error: ``--api-port 8025`` or ``VAR=8025``."""
    variable = from_environment(ctx, name)
    if variable is not None:
        return f"{variable}={value}"
    return f"--{name.replace('_', '-')} {value}"


def _name_the_variable(ctx: click.Context, error: click.BadParameter) -> None:
    """Reword "Invalid value for '--port'" as "... for FAKESMTP_SERVE_PORT (--port)"."""
    param = error.param
    if param is not None and param.name is not None:
        variable = from_environment(ctx, param.name)
        if variable is not None:
            error.param_hint = f"{variable} ({param.opts[0] if param.opts else param.name})"


def _long_flag(param: click.Option) -> str | None:
    flags = [opt for opt in param.opts if opt.startswith("--")]
    return flags[0][2:].upper().replace("-", "_") if flags else None


def _name_variables_by_flag(ctx: click.Context, command: click.Command) -> None:
    """``--json`` reads FAKESMTP_<COMMAND>_JSON even when its Python name is ``as_json``.

    click names automatic variables after the parameter's Python name; users know the flag.
    The Python-name variable still works: click falls back to it.
    """
    if not ctx.auto_envvar_prefix:
        return
    for param in command.params:
        if isinstance(param, click.Option) and not param.envvar and not param.is_eager:
            flag = _long_flag(param)
            if flag is not None and param.name is not None and flag != param.name.upper():
                param.envvar = f"{ctx.auto_envvar_prefix}_{flag}"


class _NamesVariables(click.Command):
    """Options read from variables named by their flags; a bad value from one names it."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        _name_variables_by_flag(ctx, self)
        try:
            return super().parse_args(ctx, args)
        except click.BadParameter as error:
            _name_the_variable(ctx, error)
            raise


class EnvCommand(_NamesVariables):
    """A command whose bad option values from the environment are reported as variables."""


class EnvGroup(_NamesVariables, click.Group):
    """A group whose commands and subgroups are EnvCommands and EnvGroups."""

    command_class = EnvCommand
    group_class = type  # subgroups made with @group.group() are EnvGroups too

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        # A command made elsewhere with plain @click.command() gets the same treatment.
        if type(cmd) is click.Command:
            cmd.__class__ = EnvCommand
        elif type(cmd) is click.Group:
            cmd.__class__ = EnvGroup
        super().add_command(cmd, name)


def known_variables(command: click.Command, prefix: str = PREFIX) -> Iterator[str]:
    """Every variable the command tree under ``command`` reads, as click would name it."""
    for param in command.params:
        if isinstance(param, click.Option) and param.name and not param.is_eager:
            if param.envvar:
                names = [param.envvar] if isinstance(param.envvar, str) else list(param.envvar)
                yield from names
            yield f"{prefix}_{param.name.upper()}"
            flag = _long_flag(param)
            if flag is not None:
                yield f"{prefix}_{flag}"
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from known_variables(sub, f"{prefix}_{name.upper().replace('-', '_')}")


def unknown_variables(
    command: click.Command, environ: Mapping[str, str] | None = None
) -> list[str]:
    """One warning per ``FAKESMTP_*`` variable nothing reads, with the closest real name."""
    environ = os.environ if environ is None else environ
    if not any(name.startswith(PREFIX + "_") for name in environ):
        return []  # the usual case: no need to walk every option of every command at start-up
    known = set(known_variables(command)) | OTHER_VARIABLES
    warnings = []
    for name in sorted(environ):
        if not name.startswith(PREFIX + "_") or name in known:
            continue
        # Compared without the shared FAKESMTP_, which would make every name look close.
        by_suffix = {known_name[len(PREFIX) + 1 :]: known_name for known_name in known}
        near = closest(name[len(PREFIX) + 1 :], by_suffix)
        hint = f"; did you mean {by_suffix[near]}?" if near else ""
        warnings.append(f"fakesmtp: warning: {name} is not a fakesmtp variable, ignored{hint}")
    return warnings
