"""The autoscaler: a pure decision function, what it observes, and a simulation to judge it.

    decide(policy, observation, history) -> Decision     (decide.py)

The operator's timer (handlers/autoscaling.py) builds the Observation from the pods' metrics
(scrape.py), calls decide, applies or only reports the Decision, and keeps the history.
"""

from .decide import decide
from .decision import Decision, HistoryEntry, PoolDecision, Signal
from .observation import Observation, PodSample, PoolObservation, RouterSample

__all__ = [
    "Decision",
    "HistoryEntry",
    "Observation",
    "PodSample",
    "PoolDecision",
    "PoolObservation",
    "RouterSample",
    "Signal",
    "decide",
]
