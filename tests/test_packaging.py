"""pyproject.toml holds lower bounds (and jax's stated cap); constraints.txt the
exact versions CI tests. The two must agree."""

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent


def _pins() -> dict[str, Version]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not NAME==VERSION"
            pins[canonicalize_name(name)] = Version(version)
    return pins


def _requirements() -> list[tuple[str, Requirement]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    out = [("dependencies", Requirement(r)) for r in project["dependencies"]]
    for extra, reqs in project["optional-dependencies"].items():
        out += [(extra, Requirement(r)) for r in reqs]
    return out


def test_every_requirement_has_a_lower_bound_and_no_exact_pin():
    for where, req in _requirements():
        operators = {s.operator for s in req.specifier}
        assert ">=" in operators, f"{where}: {req} has no lower bound"
        assert not operators & {"==", "==="}, f"{where}: {req} pins an exact version"


def test_the_tested_versions_satisfy_pyproject():
    pins = _pins()
    for where, req in _requirements():
        name = canonicalize_name(req.name)
        if where in ("cuda12", "tpu"):
            continue  # accelerator builds: not installed by CI
        assert name in pins, f"{req.name} ({where}) has no tested version in constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt {req.name}=={pins[name]} is outside pyproject's {req}")


def test_accelerator_extras_follow_the_jax_range():
    reqs = dict((r.name + ":" + w, r) for w, r in _requirements())
    jax = next(r for w, r in _requirements() if r.name == "jax" and w == "dependencies")
    for extra, flavour in (("cuda12", "cuda12"), ("tpu", "tpu")):
        req = reqs[f"jax:{extra}"]
        assert req.extras == {flavour} and req.specifier == jax.specifier
