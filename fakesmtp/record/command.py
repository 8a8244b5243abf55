"""``fakesmtp record``: the click command, registered by cli.py; relay and writer do the work."""

from __future__ import annotations

import asyncio
import signal
import sys
import time

import click

from ..patterns import PatternError, parse_duration


def _line(kind: str, session: object, err: bool) -> None:
    from .model import RecordedSession

    assert isinstance(session, RecordedSession)
    now = time.strftime("%H:%M:%S")
    if kind == "ended":
        click.echo(f"{now} [#{session.number}] session ended: {session.end}", err=err)
        return
    step = session.steps[-1]
    command = step.command if step.command is not None else f"({step.stage})"
    answer = step.reply.text() if step.reply is not None else f"({step.ended} by the upstream)"
    click.echo(f"{now} [#{session.number}] {session.client} {command} -> {answer}", err=err)


@click.command()
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
    metavar="N",
    default=1025,
    show_default=True,
    type=click.IntRange(0, 65535),
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
    from ..cli import BadInput
    from .relay import Recorder
    from .writer import AppendError

    if append and out is None:
        raise BadInput("--append needs --out FILE: the scenario to add to")
    if (cert is None) != (key is None):
        raise BadInput("--cert and --key go together: give both or neither")
    try:
        threshold = parse_duration(delay_threshold)
    except PatternError as error:
        raise BadInput(f"--delay-threshold: {error}") from None
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
        raise BadInput(f"{'--append' if isinstance(error, AppendError) else '--upstream'}: "
                       f"{error}") from None  # fmt: skip
    except OSError as error:
        raise BadInput(f"--out: cannot read {out}: {error.strerror or error}") from None
    if not quiet:
        # With no --out the scenario goes to stdout at the end: the running lines go to stderr.
        recorder.recording.subscribe(lambda kind, session: _line(kind, session, out is None))

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
        click.echo(f"fakesmtp record: stopped; {count} session(s) recorded in {out}", err=True)
