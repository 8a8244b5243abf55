"""fakesmtp: a programmable SMTP server for testing how mail software copes with every reply."""

from .reply import Reply
from .scenario import Rule, Scenario, ScenarioError, load_scenario
from .server import FakeSMTP
from .version import __version__

__all__ = ["FakeSMTP", "Reply", "Rule", "Scenario", "ScenarioError", "__version__", "load_scenario"]
