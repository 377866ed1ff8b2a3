"""The example web-host policy set up as the sample workloads need it: one helper for the
scenario tests and the detector-cache tests, so both run on the same policy and exports."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from tests.conftest import REPO

# reference table of the policy -> the sample's export that fills it
REFERENCES = {
    "cases": "reference_cases_before_workload.csv",
    "processing_restrictions": "reference_processing_restrictions.csv",
    "marketing_optouts": "reference_marketing_optouts.csv",
    "erasures": "reference_erasures.csv",
    "contracts": "reference_contracts.csv",
}


def write_webhost_policy(tmp: Path, exports: Path, *, hours: bool = True) -> Path:
    """``config/examples/webhost-policy.yml`` written to ``tmp`` (without its business hours
    when ``hours`` is false: a night-shift log would be all ``ntk.outside_hours``), with the
    reference tables it names copied from the sample directory ``exports``."""
    example = REPO / "config" / "examples" / "webhost-policy.yml"
    data = yaml.safe_load(example.read_text(encoding="utf-8"))
    if not hours:
        for grant in data["grants"]:
            grant.pop("hours", None)
    (tmp / "reference").mkdir(exist_ok=True)
    for name, export in REFERENCES.items():
        shutil.copy(exports / export, tmp / "reference" / f"{name}.csv")
    path = tmp / "webhost-policy.yml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path
