"""The anomaly side as ONE pipeline detector: baselines, behaviour and Sigma rules behind a
shared suppression layer, with one snapshot for the daemon to commit with the offsets."""

from __future__ import annotations

from typing import Any

from breachwatch.detection.anomaly_policy import DetectionPolicy
from breachwatch.detection.baseline import BaselineDetector
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
        self._parts = tuple(
            part
            for part, on in (
                (self.baseline, config.baselines.enabled),
                (self.behaviour, config.behaviour.enabled),
                (self.sigma, self.sigma is not None),
            )
            if on and part is not None
        )
        self._swept: Any = None
        self._sweep_every = self.suppressor.window

    def __call__(self, event: AccessEvent) -> list[Finding]:
        found: list[Finding] = []
        for part in self._parts:
            more = part(event)
            if more:
                found += more
        # Forget old suppression keys now and then (event time, once per window).
        swept = self._swept
        time = event.time
        if swept is None or time - swept >= self._sweep_every:
            self.suppressor.sweep(time)
            self._swept = time
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
