"""Vendor the browser volunteer's JavaScript dependencies from the npm registry, pinned and checked.

    python .ci/vendor_js.py            # fetch, verify and copy into coordinator/static/vendor/
    python .ci/vendor_js.py --check [DIR]   # only verify what is there against VENDOR.json (a test does)

Each package is fetched with `npm pack NAME@VERSION` (the registry only, no install scripts run), its
tarball's sha512 compared with the integrity pinned below, and only the files the page needs copied
to `coordinator/static/vendor/NAME-VERSION/` with the package's license. `VENDOR.json` records, for
every copied file, its SHA-256: the coordinator serves these files same-origin (no CDN), they ship in
the wheel, and tests/browser/test_vendor.py checks that what is on disk is what was pinned.

To move to another version: change VERSION and INTEGRITY (from `npm view NAME@VERSION dist.integrity`),
run this script, and run the browser tests.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VENDOR = REPO / "coordinator" / "static" / "vendor"
MIT_MICROSOFT = """MIT License

Copyright (c) Microsoft Corporation.

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
"""

# name, version, npm integrity of the tarball, license id, files (package-relative) to copy, and the
# license text: a file of the package, or (onnxruntime-web ships none) the MIT text its headers cite.
PACKAGES = [
    {
        "name": "onnxruntime-web",
        "version": "1.30.0",
        "integrity": "sha512-q0y+JrrtukXSzsBWEMccVfqX25LRmosXHF+CaRJmg8pZClzcV7svNc4rKY3jL02Vb7QmRMDs1SigqR4CXAfKYQ==",
        "license": "MIT",
        "files": ["dist/ort.wasm.min.mjs", "dist/ort-wasm-simd-threaded.mjs", "dist/ort-wasm-simd-threaded.wasm"],
        "license_text": MIT_MICROSOFT,
    },
    {
        "name": "@msgpack/msgpack",
        "version": "3.1.3",
        "integrity": "sha512-47XIizs9XZXvuJgoaJUIE2lFoID8ugvc0jzSHP+Ptfk8nTbnR8g788wv48N03Kx0UkAv559HWRQ3yzOgzlRNUA==",
        "license": "ISC",
        "files": ["dist.esm/*.mjs", "dist.esm/utils/*.mjs"],
        "license_file": "LICENSE",
    },
]


def folder(package: dict[str, object]) -> str:
    return f"{str(package['name']).replace('@', '').replace('/', '-')}-{package['version']}"


def integrity(package: dict[str, object]) -> str:
    return str(package["integrity"])


def fetch(package: dict[str, object], into: Path) -> Path:
    """The package's extracted tarball, after its sha512 matched the pinned integrity."""
    spec = f"{package['name']}@{package['version']}"
    out = subprocess.run(
        ["npm", "pack", spec, "--json", "--pack-destination", str(into)], check=True, capture_output=True, text=True
    ).stdout
    tarball = into / json.loads(out)[0]["filename"]
    digest = "sha512-" + base64.b64encode(hashlib.sha512(tarball.read_bytes()).digest()).decode()
    if digest != integrity(package):
        raise SystemExit(f"{spec}: the tarball's integrity {digest} is not the pinned {integrity(package)}")
    root = into / folder(package)
    with tarfile.open(tarball) as archive:
        archive.extractall(root, filter="data")
    return root / "package"


def vendor() -> None:
    manifest: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as temp:
        for package in PACKAGES:
            source = fetch(package, Path(temp))
            target = VENDOR / folder(package)
            shutil.rmtree(target, ignore_errors=True)
            files: dict[str, str] = {}
            for pattern in package["files"]:  # type: ignore[attr-defined]
                for path in sorted(source.glob(pattern)):
                    relative = path.relative_to(source)
                    name = relative.name if relative.parts[0] == "dist" else str(relative)
                    (target / name).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(path, target / name)
            license_path = target / "LICENSE"
            if "license_file" in package:
                shutil.copyfile(source / str(package["license_file"]), license_path)
            else:
                license_path.write_text(str(package["license_text"]))
            for path in sorted(p for p in target.rglob("*") if p.is_file()):
                files[str(path.relative_to(target))] = hashlib.sha256(path.read_bytes()).hexdigest()
            manifest[folder(package)] = {
                "package": package["name"],
                "version": package["version"],
                "license": package["license"],
                "npm_integrity": integrity(package),
                "files": files,
            }
    (VENDOR / "VENDOR.json").write_text(json.dumps(manifest, indent=2) + "\n")


def check(root: Path = VENDOR) -> list[str]:
    """What in `root` differs from its VENDOR.json: missing, changed or unlisted files."""
    manifest = json.loads((root / "VENDOR.json").read_text())
    problems = []
    listed = {"VENDOR.json"}
    for name, entry in manifest.items():
        for relative, digest in entry["files"].items():
            path = root / name / relative
            listed.add(f"{name}/{relative}")
            if not path.is_file():
                problems.append(f"missing: {name}/{relative}")
            elif hashlib.sha256(path.read_bytes()).hexdigest() != digest:
                problems.append(f"changed: {name}/{relative}")
    for path in root.rglob("*"):
        if path.is_file() and str(path.relative_to(root)) not in listed:
            problems.append(f"not in VENDOR.json: {path.relative_to(root)}")
    return problems


if __name__ == "__main__":
    if sys.argv[1:2] == ["--check"]:
        found = check(Path(sys.argv[2]) if len(sys.argv) > 2 else VENDOR)
        print("\n".join(found) or "vendored files match VENDOR.json")
        sys.exit(1 if found else 0)
    vendor()
    print(f"vendored into {VENDOR}; VENDOR.json written")
