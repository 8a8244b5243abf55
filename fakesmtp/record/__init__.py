"""Record a real server's behaviour as a scenario: relay to it, write what it said (``record``)."""

from .model import RecordedSession, Recording, Step, UpstreamReply
from .relay import Recorder
from .writer import append_yaml, scenario_yaml

__all__ = [
    "RecordedSession",
    "Recorder",
    "Recording",
    "Step",
    "UpstreamReply",
    "append_yaml",
    "scenario_yaml",
]
