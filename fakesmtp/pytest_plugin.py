"""pytest fixtures for fakesmtp: a real SMTP server on loopback, clean for every test.

Fixtures only (registered through the ``pytest11`` entry point), in the manner of
pytest-httpserver: one server for the whole test session, reset before and after each test, so a
test pays microseconds instead of a start and a stop.

    def test_refused_recipient_is_reported(fakesmtp):
        fakesmtp.use("unknown-recipient")
        ...
"""

from __future__ import annotations

import traceback
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from .scenario import ScenarioError, Source, load_scenario_data
from .server import FakeSMTP, ScenarioSpec

MARKER_HELP = (
    "fakesmtp(scenario): the scenario the `fakesmtp` fixture serves in this test: "
    "a built-in name, a file path, YAML text or a dict"
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER_HELP)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failing test that used ``fakesmtp`` shows its sessions' transcripts in the report."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.when != "call" or not report.failed:
        return
    server = getattr(item, "funcargs", {}).get("fakesmtp")
    if isinstance(server, FakeSMTP):
        try:
            report.sections.append(("fakesmtp transcript", server.transcript()))
        except Exception as error:  # the report must not lose the test's own failure
            report.sections.append(("fakesmtp transcript", f"(could not render: {error!r})"))


@pytest.fixture(scope="session")
def fakesmtp_server() -> Iterator[FakeSMTP]:
    """The session's one fake SMTP server, on a free port of 127.0.0.1.

    Tests should ask for ``fakesmtp``, which resets this server around each test. Override this
    fixture in a ``conftest.py`` to start it differently, e.g. with the web page::

        @pytest.fixture(scope="session")
        def fakesmtp_server():
            with FakeSMTP(api_port=0) as server:
                yield server
    """
    server = FakeSMTP(host="127.0.0.1", port=0).start()
    try:
        yield server
    finally:
        server.stop(grace=0.5)


@pytest.fixture
def fakesmtp_scenario() -> ScenarioSpec:
    """The scenario ``fakesmtp`` serves when a test has no ``@pytest.mark.fakesmtp`` marker.

    None (the default) is the scenario ``fakesmtp_server`` started with: the default scenario,
    where every message is accepted and an address asks for its own reply (``rcpt-550@any.test``
    makes RCPT answer 550). Override it in a module or ``conftest.py`` to give a group of tests
    another scenario::

        @pytest.fixture
        def fakesmtp_scenario():
            return "greylisting"
    """
    return None


def _marker_scenario(marker: pytest.Mark) -> ScenarioSpec:
    args, kwargs = marker.args, marker.kwargs
    if len(args) + len(kwargs) > 1 or set(kwargs) - {"scenario"}:
        pytest.fail(
            "@pytest.mark.fakesmtp takes one argument, the scenario: "
            "@pytest.mark.fakesmtp(scenario=...) or @pytest.mark.fakesmtp(...)",
            pytrace=False,
        )
    return args[0] if args else kwargs.get("scenario")


def _clean(server: FakeSMTP) -> None:
    """No connection, counter, error, message or session crosses from one test to the next."""
    server.disconnect()
    server.reset()


@pytest.fixture
def fakesmtp(
    request: pytest.FixtureRequest, fakesmtp_server: FakeSMTP, fakesmtp_scenario: Any
) -> Iterator[FakeSMTP]:
    """A fake SMTP server for this test: real SMTP on ``fakesmtp.host``:``fakesmtp.port``.

    It starts empty, with the scenario of the test's ``@pytest.mark.fakesmtp(scenario=...)``
    marker, else the ``fakesmtp_scenario`` fixture's (None: the default scenario). The port is
    the same for every test of the session (``fakesmtp_server.port``), so an application
    configured once can be pointed at it.

    - ``fakesmtp.use(scenario)`` swaps the scenario at once: a built-in name, a file path, YAML
      text, a dict or a ``Scenario``. An invalid one raises ``ScenarioError`` and changes nothing.
    - ``fakesmtp.messages``: what was accepted with 250, oldest first; each has ``.mail_from``,
      ``.rcpt_tos``, ``.subject``, ``.raw`` (bytes) and ``.message`` (an ``EmailMessage``).
    - ``fakesmtp.sessions``: every connection's transcript (``.exchanges``, ``.end``).
    - ``fakesmtp.wait_for(count, timeout)``: block until ``count`` messages have arrived.
    - ``fakesmtp.reset()``: forget messages, sessions and rule counters mid-test.

    Afterwards live connections are cut, everything stored is forgotten and the scenario goes
    back to what it was, so tests do not see each other. If the server met an internal error
    (a bug of fakesmtp's) while serving the test, the test errors at teardown with its traceback.
    """
    server = fakesmtp_server
    before = server.scenario
    marker = request.node.get_closest_marker("fakesmtp")
    scenario = _marker_scenario(marker) if marker is not None else fakesmtp_scenario
    _clean(server)
    if scenario is None:
        # The server's own start-up scenario, already loaded: no file to parse per test.
        scenario = server.initial_scenario
    if scenario is not server.scenario:
        problem = ""
        try:
            if isinstance(scenario, Mapping):  # a marker's dict: errors name the test's line
                path, line, _ = request.node.location
                scenario = load_scenario_data(scenario, Source(path=path, line=line + 1))
            server.use(scenario)
        except ScenarioError as error:
            problem = str(error)
        if problem:  # failed outside the except: pytest would show the ScenarioError twice
            pytest.fail(
                f"fakesmtp: the scenario for this test is invalid:\n{problem}", pytrace=False
            )
    try:
        yield server
        errors = server.errors
        if errors:
            details = "".join(traceback.format_exception(errors[0]))
            pytest.fail(
                f"fakesmtp met {len(errors)} internal error(s) while serving this test; "
                f"the first:\n{details}",
                pytrace=False,
            )
    finally:
        _clean(server)
        if server.scenario is not before:
            server.use(before)
