"""Print pip constraints that pin each direct dependency to the lowest version pyproject.toml allows.

    python .ci/lowest_constraints.py pyproject.toml 2.13.0 > constraints.txt
    pip install -c constraints.txt -e '.[test]'

Every `name>=X` among the runtime dependencies and the extras becomes `name==X`; pins (`==`) stay
as they are, and an extra that names another (`commonweights[test]`) adds nothing itself. torch is
the exception: it is pinned to the CPU build installed first (dev.sh's TORCH_VERSION, the second
argument), never resolved, so no CUDA build is ever downloaded. Transitive dependencies resolve as
usual (pip's newest), like `uv pip install --resolution lowest-direct`.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

FLOOR = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*(>=|==)\s*([0-9][^,;\s]*)\s*$")


def constraints(pyproject: Path, torch_version: str) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        requirements += extra
    lines = [f"torch=={torch_version}"]
    for requirement in requirements:
        if requirement.startswith(project["name"] + "["):
            continue
        match = FLOOR.match(requirement.split(";")[0])
        if match is None:
            raise SystemExit(f"{pyproject}: {requirement!r} has no single lower bound (>=X) or pin (==X)")
        name, _, version = match.groups()
        if name.lower() != "torch":
            lines.append(f"{name}=={version}")
    return lines


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: lowest_constraints.py PYPROJECT TORCH_VERSION")
    print("\n".join(constraints(Path(sys.argv[1]), sys.argv[2])))
