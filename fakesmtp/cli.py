"""The ``fakesmtp`` command: thin click front-ends over the scenario, server, catalog and bounce."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import click

from .cli_env import EnvGroup, from_environment, option_label, unknown_variables
from .control import rules, wait_ready
from .remote import messages, sessions
from .scenario import (
    Problem,
    Scenario,
    ScenarioError,
    builtin_scenarios,
    load_scenario,
    load_scenario_file,
    load_scenario_text,
    unknown_scenario,
)
from .server import FakeSMTP
from .store import MAX_MESSAGES, Retention, StoreError
from .suggest import plural
from .version import __version__

STAGE_NAMES = [
    "connect",
    "helo",
    "ehlo",
    "starttls",
    "auth",
    "mail",
    "rcpt",
    "data",
    "bdat",
    "end_of_data",
    "rset",
    "noop",
    "vrfy",
    "expn",
    "help",
    "quit",
    "unknown",
]


class BadInput(click.ClickException):
    """A mistake in what the user gave us: one line, exit status 2, no traceback."""

    exit_code = 2

    def show(self, file: object = None) -> None:
        click.echo(self.format_message(), err=True)


@click.group(
    cls=EnvGroup,
    context_settings={
        "help_option_names": ["-h", "--help"],
        "max_content_width": 100,
        # Every option can come from the environment, FAKESMTP_<COMMAND>_<OPTION>: a CI service
        # container gets env vars but no command line (FAKESMTP_SERVE_SCENARIO=greylisting).
        "auto_envvar_prefix": "FAKESMTP",
    },
)
@click.version_option(__version__, prog_name="fakesmtp")
def main() -> None:
    """A fake SMTP server that gives the replies you choose, to test how mail software copes.

    \b
    Examples:
      fakesmtp serve                               # accept all mail on 127.0.0.1:1025
      fakesmtp serve --scenario greylisting        # a built-in scenario
      fakesmtp serve --scenario my.yaml --banner 421
      fakesmtp validate my.yaml
      fakesmtp explain 452
      fakesmtp explain "550 5.7.1 Message rejected as spam"
      fakesmtp from-bounce bounce.eml > repro.yaml

    With the default scenario, an address asks for its own reply: mail to rcpt-550@any.test
    gets 550 at RCPT, from mail-451@any.test gets 451 at MAIL; data-554@, end_of_data-552@ too.

    Options can also come from the environment as FAKESMTP_<COMMAND>_<OPTION>, for example
    FAKESMTP_SERVE_SCENARIO=greylisting or FAKESMTP_SERVE_BANNER=421; a FAKESMTP_ variable
    that no option reads gets a warning. Wherever a file is read, - means standard input.
    """
    for warning in unknown_variables(main):
        click.echo(warning, err=True)


@main.command()
@click.option(
    "--scenario",
    "-s",
    metavar="FILE|NAME|-",
    help="A scenario file, a built-in name (see `fakesmtp scenarios`) or - for stdin. "
    "Default: accept all, with address-driven replies.",
)
@click.option(
    "--host",
    metavar="HOST",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on. Use 0.0.0.0 only where you mean it (containers).",
)
@click.option(
    "--port",
    metavar="N",
    default=1025,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="SMTP port (0 picks a free one).",
)
@click.option(
    "--api-port",
    metavar="N",
    default=8025,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="HTTP API and web page port.",
)
@click.option("--no-api", is_flag=True, help="Do not start the HTTP API and web page.")
@click.option(
    "--api-host",
    metavar="HOST",
    help="Address the API listens on. Default: the same as --host.",
)
@click.option(
    "--api-token",
    metavar="TOKEN",
    help="Require `Authorization: Bearer TOKEN` on every API route "
    "(the page asks for it, or open it as /#token=TOKEN).",
)
@click.option(
    "--api-allow-host",
    "api_allow_hosts",
    metavar="NAME",
    multiple=True,
    envvar="FAKESMTP_SERVE_API_ALLOW_HOST",  # space-separated names
    help="Another Host name the API answers to (e.g. a container's service name). "
    "Always allowed: localhost and the addresses it listens on. Repeatable.",
)
@click.option(
    "--store",
    type=click.Path(file_okay=False),
    metavar="DIR",
    help="Keep messages and transcripts in DIR (fsynced before each 250).",
)
@click.option(
    "--store-keep",
    metavar="N|SIZE|AGE",
    callback=lambda ctx, param, value: _checked(Retention.parse, value, "--store-keep"),
    help="How much --store DIR keeps: messages (5000), bytes (2GiB) or age (7d, 12h); "
    "the oldest beyond it are deleted. Default: as many as --max-messages.",
)
@click.option(
    "--max-messages",
    type=click.IntRange(1),
    default=MAX_MESSAGES,
    show_default=True,
    metavar="N",
    help="Messages kept in memory; beyond it the oldest are dropped.",
)
@click.option(
    "--max-memory",
    metavar="SIZE",
    default="256MiB",
    show_default=True,
    callback=lambda ctx, param, value: _checked(_size, value, "--max-memory"),
    help="Memory for messages and transcripts; beyond it the oldest are dropped.",
)
@click.option(
    "--tls-port",
    type=click.IntRange(0, 65535),
    metavar="N",
    help="Also listen with implicit TLS (SMTPS) on port N.",
)
@click.option(
    "--cert",
    type=click.Path(exists=True, dir_okay=False),
    help="TLS certificate (PEM). Default: a self-signed one made at start-up.",
)
@click.option("--key", type=click.Path(exists=True, dir_okay=False), help="TLS private key (PEM).")
@click.option(
    "--banner",
    metavar="CODE|REPLY",
    help='Answer the connection with this reply, e.g. 421 or "554 5.7.1 Go away".',
)
@click.option("--ehlo", metavar="CODE|REPLY", help="Answer HELO and EHLO with this reply.")
@click.option("--lmtp", is_flag=True, help="Speak LMTP (RFC 2033): LHLO, one reply per recipient.")
@click.option("--quiet", "-q", is_flag=True, help="No line per exchange on the console.")
@click.option(
    "--loop",
    "loop_kind",
    type=click.Choice(["auto", "asyncio", "uvloop"]),
    default="auto",
    show_default=True,
    help="Event loop: uvloop when installed (pip install 'fakesmtp[fast]'), else asyncio's.",
)
@click.option(
    "--log",
    "log_each",
    envvar="FAKESMTP_SERVE_LOG",
    type=click.Choice(["exchange", "session"]),
    default="exchange",
    show_default=True,
    help="Console: a line per SMTP exchange, or one per session when it ends.",
)
@click.option(
    "--workers",
    default="1",
    show_default=True,
    metavar="N|auto",
    help="Serve SMTP from N processes on the one port (auto: one per CPU); one API shows all.",
)
@click.option(
    "--state",
    metavar="redis://HOST:PORT/DB",
    help="Keep times/after counts in Redis or Valkey, shared by every worker and instance.",
)
@click.option(
    "--no-capture",
    is_flag=True,
    help="Keep no messages or transcripts (load tests): /metrics and the console still count.",
)
@click.option(
    "--detach",
    is_flag=True,
    help="Run in the background: return once listening, printing the PID (for CI jobs).",
)
@click.option(
    "--log-file",
    type=click.Path(dir_okay=False),
    metavar="FILE",
    help="Append the console lines to FILE (with --detach: else they are not kept).",
)
@click.option("--ready-file", hidden=True, help="Where --detach's child says it listens.")
def serve(
    scenario: str | None,
    host: str,
    port: int,
    api_port: int,
    no_api: bool,
    api_host: str | None,
    api_token: str | None,
    api_allow_hosts: tuple[str, ...],
    store: str | None,
    store_keep: Retention | None,
    max_messages: int,
    max_memory: int,
    tls_port: int | None,
    cert: str | None,
    key: str | None,
    banner: str | None,
    ehlo: str | None,
    lmtp: bool,
    quiet: bool,
    loop_kind: str,
    log_each: str,
    workers: str,
    state: str | None,
    no_capture: bool,
    detach: bool,
    log_file: str | None,
    ready_file: str | None,
) -> None:
    """Serve SMTP as the scenario says, one line per exchange.

    \b
    Examples:
      fakesmtp serve
      fakesmtp serve --scenario unknown-recipient --port 2525
      fakesmtp serve --banner 421 --no-api
      fakesmtp serve --host 0.0.0.0 --store /var/lib/fakesmtp   # in a container
      fakesmtp serve --lmtp --port 2424 --scenario mailbox-full
      fakesmtp serve --workers auto --state redis://127.0.0.1:6379/0 --no-capture --quiet
      fakesmtp serve --detach --log-file fakesmtp.log        # in a CI job: prints the PID
    """
    ctx = click.get_current_context()
    if scenario == "-":  # the scenario's YAML from standard input
        scenario = sys.stdin.read()
    problems = []
    if (cert is None) != (key is None):
        problems.append("--cert and --key go together: give both or neither")
    count = _worker_count(workers)
    echo: bool | TextIO = not quiet
    if log_file is not None and not detach:  # detached, the child's whole output goes there
        if count > 1:
            problems.append("--log-file takes one worker's lines: redirect the output instead")
        try:
            echo = open(log_file, "a", encoding="utf-8", buffering=1)  # noqa: SIM115
        except OSError as error:
            problems.append(f"--log-file {log_file}: {error.strerror or error}")
    if no_capture and store is not None:
        problems.append("--no-capture keeps nothing: it cannot go with --store DIR")
    if state is not None:
        from .redis_counters import StateError, check_url

        try:
            check_url(state)
        except StateError as error:
            problems.append(str(error))
    options = dict(host=host, port=port, tls_port=tls_port, api_port=None if no_api else api_port,
                   store=store, cert=cert, key=key, banner=banner, ehlo=ehlo, lmtp=lmtp,
                   state=state, api_host=api_host, api_token=api_token,
                   api_allow_hosts=api_allow_hosts, store_keep=store_keep,
                   max_messages=max_messages, max_memory=max_memory)  # fmt: skip
    server: FakeSMTP | None = None
    try:
        if count > 1:
            from .workers import Supervisor, WorkersError

            worker_options = dict(lmtp=lmtp, cert=cert, key=key, banner=banner, ehlo=ehlo,
                                  echo=not quiet, echo_each=log_each, loop=loop_kind,
                                  state=state, capture=not no_capture)  # fmt: skip
            try:
                server = Supervisor(
                    scenario, workers=count, worker_options=worker_options, **options
                )
            except WorkersError as error:
                problems.append(str(error))
        else:
            if no_capture:
                from .store import NoCaptureStore

                options["store"] = NoCaptureStore()
            server = FakeSMTP(scenario, echo=echo, echo_each=log_each, **options)
    except ScenarioError as error:
        problems.extend(_named_by_option(ctx, error, scenario=scenario, banner=banner, ehlo=ehlo))
    if server is not None:
        problems.extend(_listen_problems(ctx, server))
    if problems:  # every problem at once, not one per attempt
        raise BadInput("\n".join(problems))
    if detach:
        serve_detached(ctx, scenario, log_file)
        return
    run_server(server, loop_kind, ready_file)


def serve_detached(ctx: click.Context, scenario: str | None, log_file: str | None) -> None:
    """Start the same ``serve`` in the background; print its PID once it listens."""
    from .background import DetachError, start

    arguments = []
    for param in ctx.command.params:
        name = param.name or ""
        given = ctx.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE
        if not given or name == "detach" or not isinstance(param, click.Option):
            continue  # defaults and FAKESMTP_SERVE_* variables reach the child by themselves
        value = scenario if name == "scenario" else ctx.params[name]  # `-`: the text read
        if param.is_flag:
            if value:
                arguments.append(param.opts[0])
            continue
        for item in value if param.multiple else (value,):
            arguments += [param.opts[0], str(item)]
    try:
        pid, info = start(arguments, log_file)
    except DetachError as error:
        click.echo(f"fakesmtp serve --detach: the server did not start:\n{error.message}", err=True)
        sys.exit(error.status)
    click.echo(pid)  # alone on stdout: PID=$(fakesmtp serve --detach)
    api = f", API on {info['api']}" if info.get("api") else ""
    click.echo(
        f"fakesmtp: serving in the background, PID {pid}: SMTP on {info['smtp']}{api}", err=True
    )


def _named_by_option(ctx: click.Context, error: ScenarioError, **values: str | None) -> list[str]:
    """A scenario, --banner or --ehlo problem under the name the user gave it.

    With FAKESMTP_SERVE_SCENARIO=greylistin the error starts with the variable, not a bare
    "greylistin:" that names nothing the user typed.
    """
    lines = str(error).splitlines()
    for name, value in values.items():
        variable = from_environment(ctx, name)
        if value is None or variable is None:
            continue
        written = f"--{name} {value}" if name != "scenario" else value
        lines = [
            f"{variable}={value}{line[len(written) :]}" if line.startswith(written + ":") else line
            for line in lines
        ]
    return lines


def _listen_problems(ctx: click.Context, server: FakeSMTP) -> list[str]:
    from .startup import Listener, listen_problems

    host_label = option_label(ctx, "host", server.host)
    wanted = [("port", server.port, "--port 0 or another port")]
    if server.tls_port is not None:
        wanted.append(("tls_port", server.tls_port, "--tls-port 0 or another port"))
    listeners = [
        Listener(
            option=f"--{name.replace('_', '-')}",
            host=server.host,
            port=port,
            label=option_label(ctx, name, port),
            host_label=host_label,
            alternatives=alternatives,
        )
        for name, port, alternatives in wanted
    ]
    if server.api_port is not None:
        api_host = getattr(server, "api_host", None) or server.host
        listeners.append(
            Listener(
                option="--api-port",
                host=api_host,
                port=server.api_port,
                label=option_label(ctx, "api_port", server.api_port),
                host_label=option_label(
                    ctx, "api_host" if api_host != server.host else "host", api_host
                ),
                alternatives="--api-port 0 or --no-api",
            )
        )
    return listen_problems(listeners)


def _worker_count(text: str) -> int:
    """``--workers``: a number from 1, or ``auto`` for one per CPU."""
    if text == "auto":
        return os.cpu_count() or 1
    if not text.isdigit() or int(text) < 1:
        raise BadInput(f"--workers {text!r}: give a number from 1, or auto (one per CPU)")
    return int(text)


def _checked(parse: Any, value: str | None, option: str) -> Any:
    """An option's text through its parser, or a one-line usage error naming the option."""
    if value is None:
        return None
    try:
        return parse(value)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint=option) from None


def _size(text: str) -> int:
    from .patterns import parse_size

    size = parse_size(text)
    if size < 1024 * 1024:
        raise ValueError(f"{text} is less than 1MiB")
    return size


def raise_open_file_limit() -> None:
    """Lift the soft limit on open files towards the hard one.

    CI machines often allow 1024 open files, fewer than max_connections' default of 1000 plus
    what the process already holds; running out would refuse connections without a reply.
    """
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        wanted = hard if hard != resource.RLIM_INFINITY else 65536
        if soft != resource.RLIM_INFINITY and soft < wanted:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, 65536), hard))
    except (ImportError, ValueError, OSError):
        pass  # not on this platform, or not allowed: keep what we have


def run_server(server: FakeSMTP, loop_kind: str = "auto", ready_file: str | None = None) -> None:
    """Run in the foreground until Ctrl-C or SIGTERM, then shut down cleanly (exit 0)."""
    from .eventloop import LoopUnavailable, loop_factory, loop_name

    raise_open_file_limit()
    try:
        new_loop = loop_factory(loop_kind)
    except LoopUnavailable as error:
        raise BadInput(str(error)) from None

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        task = asyncio.create_task(server.serve_forever(stop))
        while not server.listening:  # until the listeners (and, with --workers, the workers) are up
            if task.done():
                await task
                return
            await asyncio.sleep(0.005)
        scenario = server.scenario
        api = (
            f", API and web page on http://{server.api_host}:{server.api_port}/"
            if server.api_port is not None
            else ""
        )
        if api and server.api_access.token:
            api += " (token required)"  # never the token itself: consoles end up in CI logs
        smtps = f", SMTPS on {server.host}:{server.tls_port}" if server.tls_port else ""
        protocol = "LMTP" if server.lmtp else "SMTP"
        extras = [f"{server.worker_count} workers"] if hasattr(server, "worker_count") else []
        extras += ["uvloop"] if loop_name(loop) == "uvloop" else []
        extras += [f"counts in {server.state}"] if server.state else []
        more = f" ({', '.join(extras)})" if extras else ""
        click.echo(
            f"fakesmtp {__version__}: {protocol} on {server.host}:{server.port}{smtps}{api}{more}"
        )
        click.echo(
            f"scenario: {scenario.name} ({plural(len(scenario.rules), 'rule')}"
            f"{', address-driven replies' if scenario.server.address_replies else ''})"
            f" - Ctrl-C to stop"
        )
        sys.stdout.flush()
        if ready_file is not None:  # serve --detach's parent is waiting for this
            from .background import write_ready

            write_ready(
                ready_file,
                {
                    "pid": os.getpid(),
                    "smtp": f"{server.host}:{server.port}",
                    "api": f"http://{server.api_host}:{server.api_port}/" if api else None,
                },
            )
        await task

    try:
        with asyncio.Runner(loop_factory=new_loop) as runner:
            runner.run(run())
    except StoreError as error:
        raise BadInput(str(error)) from None
    except OSError as error:
        raise BadInput(f"cannot listen: {error.strerror or error}") from None
    except Exception as error:
        if getattr(error, "exit_code", None) == 2:  # the user's to fix (--state, --workers)
            raise BadInput(str(error)) from None
        raise
    click.echo("fakesmtp: stopped")


def read_scenario(spec: str) -> Scenario:
    """A scenario from a file, a built-in name, or ``-`` (standard input)."""
    if spec == "-":
        return load_scenario_text(sys.stdin.read(), "<stdin>")
    path = Path(spec)
    if path.is_file() or path.suffix in (".yaml", ".yml") or path.parent != Path("."):
        return load_scenario_file(path)  # a path: "cannot read" beats "no built-in"
    builtin = builtin_scenarios().get(spec)
    if builtin is None:
        raise unknown_scenario(spec)
    return load_scenario_file(builtin)


def _problem_json(problem: Problem) -> dict[str, Any]:
    return {
        "file": problem.path,
        "line": problem.line or None,
        "column": problem.column,
        "key": problem.key,
        "message": problem.message,
        "allowed": problem.allowed or None,
        "hint": problem.hint or None,
    }


@main.command()
@click.argument("files", nargs=-1, required=True, metavar="FILE|NAME|-...")
@click.option("--json", "as_json", is_flag=True, help="One JSON report for all files.")
def validate(files: tuple[str, ...], as_json: bool) -> None:
    """Check scenarios and report every problem at once.

    Each problem is one FILE:LINE: key: what is wrong (allowed: ...) line, with the fix when
    it is known.

    Takes files, built-in names and - (standard input). Exits 0 when every one is valid,
    2 otherwise.

    \b
    Examples:
      fakesmtp validate scenarios/*.yaml
      fakesmtp validate greylisting
      fakesmtp from-bounce bounce.eml | fakesmtp validate -
    """
    bad = 0
    report = []
    for name in files:
        try:
            scenario = read_scenario(name)
        except ScenarioError as error:
            bad += 1
            report.append({"file": name, "valid": False, "problems": [
                _problem_json(problem) for problem in error.problems
            ]})  # fmt: skip
            if not as_json:
                click.echo(str(error), err=True)
            continue
        count = len(scenario.rules)
        report.append({"file": name, "valid": True, "name": scenario.name, "rules": count})
        if not as_json:
            click.echo(f"{name}: ok ({plural(count, 'rule')})")
    if as_json:
        click.echo(json.dumps(report, indent=2, ensure_ascii=False))
    if bad:
        sys.exit(2)


@main.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="JSON, for scripts.")
@click.pass_context
def scenarios(ctx: click.Context, as_json: bool) -> None:
    """The built-in scenarios; `show NAME` prints one.

    Use them with `fakesmtp serve --scenario NAME`.

    \b
    Examples:
      fakesmtp scenarios
      fakesmtp scenarios show greylisting > mine.yaml   # a start for your own
    """
    if ctx.invoked_subcommand is not None:
        return
    found = builtin_scenarios()
    listing = []
    for name, path in found.items():
        try:
            loaded = load_scenario_file(path)
            listing.append({"name": name, "description": loaded.description,
                            "rules": len(loaded.rules)})  # fmt: skip
        except ScenarioError as error:
            listing.append({"name": name, "description": f"(invalid: {error.problems[0]})"})
    if as_json:
        click.echo(json.dumps(listing, indent=2, ensure_ascii=False))
        return
    width = max((len(name) for name in found), default=0)
    for item in listing:
        click.echo(f"{item['name']:<{width}}  {item['description']}")


@scenarios.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Name, file and YAML text as JSON.")
def scenarios_show(name: str, as_json: bool) -> None:
    """A built-in scenario's YAML, comments included.

    A start for your own: copy it, change it, check it with `fakesmtp validate`.

    \b
    Example:
      fakesmtp scenarios show mailbox-full > my-scenario.yaml
    """
    path = builtin_scenarios().get(name)
    if path is None:
        raise BadInput(str(unknown_scenario(name)))
    text = path.read_text(encoding="utf-8")
    if as_json:
        click.echo(json.dumps({"name": name, "file": str(path), "yaml": text}, indent=2))
        return
    click.echo(text, nl=False)


@main.command()
@click.argument("words", nargs=-1, required=True, metavar="CODE|X.Y.Z|REPLY|-")
@click.option(
    "--lang",
    type=click.Choice(["en", "fr"]),
    default="en",
    show_default=True,
    help="Language of the explanations.",
)
@click.option("--json", "as_json", is_flag=True, help="JSON, for scripts.")
def explain(words: tuple[str, ...], lang: str, as_json: bool) -> None:
    """What a code, status or reply means, and what to do.

    A pasted reply is read from what it says: a vendor's known use of its status, the status,
    recognisable wording (greylisting, DMARC, rate limits...), then the code. - reads the
    reply (or a bounce's line) from standard input.

    \b
    Examples:
      fakesmtp explain 452
      fakesmtp explain 5.7.26
      fakesmtp explain "550 5.1.1 <bob@example.test>: Recipient address rejected"
      grep -m1 'said: ' bounce.eml | fakesmtp explain -
    """
    from . import catalog

    text = sys.stdin.read() if words == ("-",) else " ".join(words)
    try:
        if as_json:
            data = catalog.explain_data(text, lang=lang)
            click.echo(json.dumps(data, indent=2, ensure_ascii=False))
        else:
            click.echo(catalog.explain(text, lang=lang))
    except ValueError as error:
        raise BadInput(str(error)) from None


@main.command()
@click.option(
    "--class",
    "kind",
    metavar="CLASS",
    type=click.Choice(["success", "intermediate", "transient", "permanent", "not-a-reply"]),
    help="Only codes of this class.",
)
@click.option(
    "--stage",
    metavar="STAGE",
    type=click.Choice(STAGE_NAMES),
    help="Only codes sent at this stage (connect, helo, ... end_of_data ... unknown).",
)
@click.option("--json", "as_json", is_flag=True, help="JSON, for scripts.")
@click.option(
    "--lang",
    type=click.Choice(["en", "fr"]),
    default="en",
    show_default=True,
    help="Language of the explanations.",
)
def codes(kind: str | None, stage: str | None, as_json: bool, lang: str) -> None:
    """The whole reply catalog as a table.

    \b
    Examples:
      fakesmtp codes --class transient
      fakesmtp codes --stage rcpt --json
    """
    from . import catalog

    click.echo(catalog.render_codes(kind=kind, stage=stage, as_json=as_json, lang=lang))


@main.command("from-bounce")
@click.argument(
    "source", type=click.Path(exists=True, allow_dash=True, path_type=str), metavar="FILE|DIR|-"
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the findings (recipient, code, status, stage, text, family, evidence) as JSON.",
)
@click.option("--serve", "then_serve", is_flag=True, help="Serve the scenario at once.")
@click.option(
    "--port",
    metavar="N",
    default=1025,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="With --serve: SMTP port.",
)
@click.option(
    "--host",
    metavar="HOST",
    default="127.0.0.1",
    show_default=True,
    help="With --serve: address to listen on.",
)
@click.option(
    "--api-port",
    metavar="N",
    default=8025,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="With --serve: HTTP API and web page port.",
)
@click.option("--no-api", is_flag=True, help="With --serve: no HTTP API.")
def from_bounce(
    source: str,
    as_json: bool,
    then_serve: bool,
    port: int,
    host: str,
    api_port: int,
    no_api: bool,
) -> None:
    """A bounce, folder or log -> a scenario giving that reply.

    Reads .eml and mbox files, Maildir or plain directories (one scenario, one rule per
    distinct reply and recipients), pasted text and log lines. The reply is reproduced at the
    stage the bounce states, for the recipients it names. Exits 2 when the bounce holds no
    reply from a remote server (DNS, timeout, expiry, a local error).

    \b
    Examples:
      fakesmtp from-bounce bounce.eml > repro.yaml
      fakesmtp from-bounce ~/Maildir/.Bounces > repro.yaml
      grep status=bounced /var/log/mail.log | fakesmtp from-bounce -
      fakesmtp from-bounce bounce.eml --json
      fakesmtp from-bounce bounce.eml --serve
    """
    from .bounce import BounceError, findings_json, parse_sources, scenario_yaml
    from .bounce.inputs import read_path, read_stdin

    name = "<stdin>" if source == "-" else source
    try:
        sources = [read_stdin(sys.stdin.buffer)] if source == "-" else read_path(source)
        collected = parse_sources(sources)
        if as_json:
            click.echo(findings_json(collected.findings), nl=False)
            return
        text = scenario_yaml(collected.findings, name, collected.skipped)
    except BounceError as error:
        raise BadInput(f"{name}: {error}") from None
    except OSError as error:
        raise BadInput(f"{name}: cannot read: {error.strerror or error}") from None
    if not then_serve:
        click.echo(text, nl=False)
        return
    try:
        scenario = load_scenario(text)
    except ScenarioError as error:  # a bug of ours if it happens: say so plainly
        raise BadInput(f"the generated scenario is invalid: {error}") from None
    click.echo(text, err=True, nl=False)
    server = FakeSMTP(
        scenario, host=host, port=port, api_port=None if no_api else api_port, echo=True
    )
    problems = _listen_problems(click.get_current_context(), server)
    if problems:
        raise BadInput("\n".join(problems))
    run_server(server)


main.add_command(messages)
main.add_command(sessions)
main.add_command(wait_ready)
main.add_command(rules)


def _record_line(kind: str, session: Any, err: bool) -> None:
    """One line per relayed exchange (AUTH arguments already masked), as serve prints them."""
    now = time.strftime("%H:%M:%S")
    if kind == "ended":
        click.echo(f"{now} [#{session.number}] session ended: {session.end}", err=err)
        return
    step = session.steps[-1]
    command = step.command if step.command is not None else f"({step.stage})"
    answer = step.reply.text() if step.reply is not None else f"({step.ended} by the upstream)"
    click.echo(f"{now} [#{session.number}] {session.client} {command} -> {answer}", err=err)


@main.command()
@click.option(
    "--upstream",
    required=True,
    metavar="HOST[:PORT]",
    help="The server to relay to and record (port 25 when not given). Nothing goes anywhere else.",
)
@click.option(
    "--out",
    "-o",
    type=click.Path(dir_okay=False),
    metavar="FILE",
    help="Write the scenario here, rewritten after each session. Default: print it at the end.",
)
@click.option("--append", is_flag=True, help="Add to FILE's rules; rules it has are not repeated.")
@click.option(
    "--host",
    metavar="HOST",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on. Use 0.0.0.0 only where you mean it.",
)
@click.option(
    "--port",
    default=1025,
    show_default=True,
    type=click.IntRange(0, 65535),
    metavar="N",
    help="Port to listen on (0 picks a free one).",
)
@click.option(
    "--starttls",
    is_flag=True,
    help="Insist on STARTTLS to the upstream (used whenever offered anyway): without it, "
    "nothing past EHLO is relayed.",
)
@click.option(
    "--keep-bodies",
    is_flag=True,
    help="Keep message text in the recording (comments, and Subject in end-of-data rules).",
)
@click.option(
    "--delay-threshold",
    default="1s",
    show_default=True,
    metavar="DURATION",
    help="Replies slower than this keep their delay in the rule.",
)
@click.option(
    "--cert",
    type=click.Path(exists=True, dir_okay=False),
    help="TLS certificate (PEM) shown to clients. Default: a self-signed one.",
)
@click.option("--key", type=click.Path(exists=True, dir_okay=False), help="TLS private key (PEM).")
@click.option("--quiet", "-q", is_flag=True, help="No line per exchange on the console.")
def record(
    upstream: str,
    out: str | None,
    append: bool,
    host: str,
    port: int,
    starttls: bool,
    keep_bodies: bool,
    delay_threshold: str,
    cert: str | None,
    key: str | None,
    quiet: bool,
) -> None:
    """Relay to a real server; write what it said as a scenario.

    Every client session is passed to the upstream command by command, its replies come back
    unchanged, and each distinct reply becomes a rule. AUTH is passed through; credentials are
    never written. Stop with Ctrl-C.

    \b
    Examples:
      fakesmtp record --upstream mx.example.test --out mx.yaml --port 2525
      fakesmtp record --upstream staging-relay:587 --starttls --out relay.yaml --append
      fakesmtp serve --scenario mx.yaml            # replay it
    """
    from .patterns import PatternError, parse_duration
    from .record.relay import Recorder
    from .record.writer import AppendError

    if append and out is None:
        raise BadInput("--append needs --out FILE: the scenario to add to")
    if out is not None and not Path(out).resolve().parent.is_dir():
        raise BadInput(f"--out: {Path(out).parent} is not a directory")
    if (cert is None) != (key is None):
        raise BadInput("--cert and --key go together: give both or neither")
    try:
        threshold = parse_duration(delay_threshold)
    except PatternError as error:
        label = option_label(click.get_current_context(), "delay_threshold", delay_threshold)
        raise BadInput(f"{label}: {error}") from None
    try:
        recorder = Recorder(
            upstream,
            host=host,
            port=port,
            out=out,
            append=append,
            require_tls=starttls,
            keep_bodies=keep_bodies,
            cert=cert,
            key=key,
            delay_threshold=threshold,
        )
    except ValueError as error:  # a bad --upstream, or --append to an invalid file
        if isinstance(error, AppendError):
            raise BadInput(f"--append: {error}") from None
        label = option_label(click.get_current_context(), "upstream", upstream)
        raise BadInput(f"{label}: {error}") from None
    except OSError as error:
        raise BadInput(f"--out: cannot read {out}: {error.strerror or error}") from None
    if not quiet:
        # With no --out the scenario goes to stdout at the end: the running lines go to stderr.
        recorder.recording.subscribe(lambda kind, session: _record_line(kind, session, out is None))

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await recorder.start()
        where = f"writing {out}" if out else "the scenario is printed when you stop"
        click.echo(
            f"fakesmtp record: SMTP on {recorder.host}:{recorder.port}, relaying to {upstream};"
            f" {where} - Ctrl-C to stop",
            err=out is None,
        )
        sys.stdout.flush()
        try:
            await stop.wait()
        finally:
            await recorder.stop()

    try:
        asyncio.run(run())
    except OSError as error:
        raise BadInput(f"cannot listen: {error.strerror or error}") from None
    if out is None:
        click.echo(recorder.yaml(), nl=False)
    else:
        count = len(recorder.recording.sessions())
        click.echo(
            f"fakesmtp record: stopped; {count} session(s) recorded in {out}"
            f" - replay it with: fakesmtp serve --scenario {out}",
            err=True,
        )


if __name__ == "__main__":  # pragma: no cover
    main()
