"""The anomaly side as ONE pipeline detector: baselines, behaviour and Sigma rules behind a
shared suppression layer, with one snapshot for the daemon to commit with the offsets."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from breachwatch.detection.anomaly_policy import DetectionPolicy
from breachwatch.detection.baseline import COUNTED_ACTIONS, BaselineDetector
from breachwatch.detection.behaviour import BehaviourDetector
from breachwatch.detection.findings import Finding
from breachwatch.detection.need_to_know import PolicyView
from breachwatch.detection.sigma import SigmaDetector, SigmaError, SigmaRuleSet, load_sigma
from breachwatch.detection.suppression import Suppressor
from breachwatch.errors import ConfigError
from breachwatch.events import AccessEvent


def detection_of(view: PolicyView) -> DetectionPolicy:
    found = getattr(view.policy, "detection", None)
    return found if isinstance(found, DetectionPolicy) else DetectionPolicy()


class AnomalyDetectors:
    """``detector(event) -> list[Finding]`` with ``snapshot()`` / ``restore()``."""

    def __init__(self, view: PolicyView, config: DetectionPolicy | None = None) -> None:
        config = config or detection_of(view)
        self.config = config
        self.suppressor = Suppressor(config.suppression.window, config.suppression.max_keys)
        self.baseline = BaselineDetector(view, config.baselines, self.suppressor)
        self.behaviour = BehaviourDetector(view, config.behaviour, self.suppressor)
        rules = SigmaRuleSet()
        if config.sigma_rules:
            try:
                rules = load_sigma(config.sigma_rules)
            except SigmaError as exc:
                raise ConfigError("policy", "detection.sigma_rules", str(exc)) from exc
        self.sigma = SigmaDetector(rules, self.suppressor) if len(rules) else None
        self._swept: Any = None
        self._sweep_every = self.suppressor.window
        # The sweep is due only when the event time moves on: events come in runs of one
        # timestamp (one datetime object), and within a run the last check stands (exact
        # for a positive window: a sweep at ``t`` leaves ``t - swept`` at zero; with any
        # other window every event checks).
        self._checked: Any = None
        self._same_time_stands = self._sweep_every > timedelta(0)
        # The parts as bound methods (None when off): calling an instance goes through its
        # type's __call__ slot, twice the cost of calling its bound method. The baseline
        # looks at counted actions only (it returns at once, untouched, for the others).
        self._baseline = self.baseline.__call__ if config.baselines.enabled else None
        self._behaviour = self.behaviour.__call__ if config.behaviour.enabled else None
        self._sigma = self.sigma.__call__ if self.sigma is not None else None

    def __call__(self, event: AccessEvent) -> list[Finding]:
        baseline = self._baseline
        behaviour = self._behaviour
        if baseline is not None and event.action in COUNTED_ACTIONS:
            found = baseline(event)  # a fresh list (each part returns its own)
            if behaviour is not None:
                more = behaviour(event)
                if more:
                    found += more
        elif behaviour is not None:
            found = behaviour(event)
        else:
            found = []
        if self._sigma is not None:
            more = self._sigma(event)
            if more:
                found += more
        # Forget old suppression keys now and then (event time, once per window).
        time = event.time
        if time is not self._checked:
            swept = self._swept
            if swept is None or time - swept >= self._sweep_every:
                self.suppressor.sweep(time)
                self._swept = time
            if self._same_time_stands:
                self._checked = time
        return found

    def snapshot(self) -> dict[str, Any]:
        return {
            "version": 1,
            "baseline": self.baseline.snapshot(),
            "behaviour": self.behaviour.snapshot(),
            "suppression": self.suppressor.snapshot(),
        }

    def restore(self, data: Any) -> None:
        """All or nothing: a malformed part raises ValueError and the state stays as it was."""
        if not isinstance(data, dict) or data.get("version") != 1:
            raise ValueError("not an anomaly-detector snapshot of version 1")
        before = self.snapshot()
        try:
            self.baseline.restore(data["baseline"])
            self.behaviour.restore(data["behaviour"])
            self.suppressor.restore(data["suppression"])
        except (KeyError, TypeError, ValueError) as exc:
            self.baseline.restore(before["baseline"])
            self.behaviour.restore(before["behaviour"])
            self.suppressor.restore(before["suppression"])
            raise ValueError(f"unusable anomaly snapshot: {exc}") from exc
