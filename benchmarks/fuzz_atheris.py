"""Coverage-guided fuzzing of every log format and of the config loaders with atheris.

    .venv/bin/pip install atheris
    .venv/bin/python benchmarks/fuzz_atheris.py parsers -atheris_runs=200000
    .venv/bin/python benchmarks/fuzz_atheris.py config -max_total_time=600

``parsers``: the input's first byte picks a format of the registry, the rest is split into
lines and framed + parsed; anything but events or a ParseFailure is a crash. ``config``: the
input is written as a YAML file and loaded with load_config and load_policy; anything but a
ConfigError is a crash. The corpus is seeded from ../shared/samples and config/.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

try:
    import atheris
except ImportError:  # pragma: no cover - optional tool
    sys.exit("atheris is not installed: .venv/bin/pip install atheris")

with atheris.instrument_imports():
    from breachwatch.config import load_config
    from breachwatch.detection.policy import load_policy
    from breachwatch.errors import ConfigError, ParseFailure
    from breachwatch.parsers.registry import build_format
    from tests.test_fuzz_parsers_corpus import FORMATS, run_format, to_lines

NAMES = sorted(FORMATS)
BUILT = {name: build_format(name, FORMATS[name][0]) for name in NAMES}
TMP = Path(tempfile.mkdtemp(prefix="bw-atheris-"))


def fuzz_parsers(data: bytes) -> None:
    if not data:
        return
    fmt = BUILT[NAMES[data[0] % len(NAMES)]]
    run_format(fmt, to_lines(data[1:].split(b"\n")))


def fuzz_config(data: bytes) -> None:
    path = TMP / "fuzz.yml"
    path.write_bytes(data)
    for load in (load_config, load_policy):
        with contextlib.suppress(ConfigError):
            load(path)


def seed_corpus(kind: str) -> Path:
    corpus = TMP / f"corpus-{kind}"
    corpus.mkdir(exist_ok=True)
    if kind == "config":
        # the shipped config and policy, and the example ones (another site's shape)
        for path in [
            *(REPO / "config").glob("*.yml"),
            *(REPO / "config" / "examples").glob("*.yml"),
        ]:
            (corpus / path.name).write_bytes(path.read_bytes())
        return corpus
    samples = REPO.parent / "shared" / "samples"
    for index, name in enumerate(NAMES):
        for folder, file in FORMATS[name][1]:
            lines = (samples / folder / file).read_bytes().splitlines()[:200]
            for n in range(0, len(lines), 20):
                chunk = bytes([index]) + b"\n".join(lines[n : n + 20])
                (corpus / f"{name}-{n}").write_bytes(chunk)
    return corpus


def main() -> None:
    kind = sys.argv[1] if len(sys.argv) > 1 and sys.argv[1] in ("parsers", "config") else ""
    if not kind:
        sys.exit("usage: fuzz_atheris.py parsers|config [libFuzzer options]")
    corpus = seed_corpus(kind)
    target = fuzz_parsers if kind == "parsers" else fuzz_config
    atheris.Setup([sys.argv[0], *sys.argv[2:], str(corpus)], target)
    assert ParseFailure  # imported for the reader: the allowed outcome besides events
    atheris.Fuzz()


if __name__ == "__main__":
    main()
