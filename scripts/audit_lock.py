"""./scripts/audit: the lock files against known vulnerabilities (scripts/audit, docs/security.md).

Exit status: 0 clean (or no database reachable, without --require), 1 a finding or a problem.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
DEV_LOCK = ROOT / "requirements-dev.lock"
RUNTIME_LOCK = ROOT / "requirements.lock"
PYPI = "https://pypi.org/pypi"
OSV = "https://api.osv.dev/v1/query"
PROBE_TIMEOUT = 10.0
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")
HASH = re.compile(r"--hash=sha256:[0-9a-f]{64}")


def say(msg: str) -> None:
    print(f"audit: {msg}", flush=True)


def read_lock(path: Path) -> dict[str, tuple[str, int]]:
    """name -> (version, number of sha256 hashes)."""
    pins: dict[str, tuple[str, int]] = {}
    current = ""
    for line in path.read_text().splitlines():
        m = PIN.match(line)
        if m:
            current = canonicalize_name(m.group(1))
            pins[current] = (m.group(2), 0)
        if current and HASH.search(line):
            version, hashes = pins[current]
            pins[current] = (version, hashes + len(HASH.findall(line)))
        if line and not line.startswith((" ", "#")) and not m:
            current = ""
    return pins


def offline_checks() -> tuple[list[str], dict[str, str]]:
    problems: list[str] = []
    locks = {}
    for path in (DEV_LOCK, RUNTIME_LOCK):
        if not path.is_file():
            problems.append(f"{path.name} is missing: run ./scripts/lock")
            continue
        locks[path] = read_lock(path)
        for name, (_version, hashes) in locks[path].items():
            if hashes == 0:
                problems.append(f"{path.name}: {name} has no sha256 hash: run ./scripts/lock")
    if problems:
        return problems, {}
    dev = {n: v for n, (v, _) in locks[DEV_LOCK].items()}
    runtime = {n: v for n, (v, _) in locks[RUNTIME_LOCK].items()}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [(r, "dependencies") for r in project["dependencies"]]
    wanted += [(r, "dev extra") for r in project["optional-dependencies"]["dev"]]
    for spec, where in wanted:
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        targets = [(DEV_LOCK.name, dev)]
        if where == "dependencies":
            targets.append((RUNTIME_LOCK.name, runtime))
        for lock_name, pins in targets:
            if name not in pins:
                problems.append(f"{lock_name} lacks {req.name} ({where}): run ./scripts/lock")
            elif not req.specifier.contains(Version(pins[name]), prereleases=True):
                problems.append(
                    f"{lock_name} pins {req.name}=={pins[name]}, outside pyproject.toml's"
                    f" {req.specifier}: run ./scripts/lock"
                )
    for name, version in runtime.items():
        if dev.get(name) != version:
            problems.append(
                f"{RUNTIME_LOCK.name} pins {name}=={version} but {DEV_LOCK.name} has"
                f" {dev.get(name)}: run ./scripts/lock"
            )
    return problems, dev


def http_status(url: str, data: bytes | None = None) -> int | None:
    """The HTTP status the URL answers with, or None if nothing answered."""
    headers = {"Content-Type": "application/json"} if data is not None else {}
    request = urllib.request.Request(url, data=data, headers=headers)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=PROBE_TIMEOUT) as response:  # noqa: S310
            return int(response.status)
    except urllib.error.HTTPError as e:
        return e.code
    except (urllib.error.URLError, OSError, TimeoutError):
        return None


def pip_audit(service: str, osv_url: str | None, ignored: list[str]) -> tuple[str, list[str]]:
    """('ok'|'vulnerable'|'unreachable'|'error', report lines)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "audit.json"
        cmd = [sys.executable, "-m", "pip_audit", "--requirement", str(DEV_LOCK), "--disable-pip"]
        cmd += ["--strict", "--vulnerability-service", service, "--progress-spinner", "off"]
        cmd += ["--desc", "off", "--format", "json", "--output", str(out)]
        if osv_url:
            cmd += ["--osv-url", osv_url]
        for vuln in ignored:
            cmd += ["--ignore-vuln", vuln]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)  # noqa: S603
        except subprocess.TimeoutExpired:
            return "unreachable", ["pip-audit took longer than 15 minutes"]
        stderr = proc.stderr.strip().splitlines()
        if not out.is_file():
            network = re.compile(r"ConnectionError|Timeout|NameResolution|Max retries|ProxyError")
            if any(network.search(line) for line in stderr):
                return "unreachable", stderr[-1:]
            return "error", stderr[-15:]
        report = json.loads(out.read_text())
    lines = []
    for dep in report.get("dependencies", []):
        for vuln in dep.get("vulns", []):
            fixes = ", ".join(vuln.get("fix_versions") or []) or "no fixed release"
            aliases = ", ".join(vuln.get("aliases") or [])
            lines.append(
                f"{dep['name']}=={dep['version']}: {vuln['id']} ({aliases}) fixed in: {fixes}"
            )
    if lines:
        return "vulnerable", lines
    if proc.returncode != 0:
        return "error", stderr[-15:]
    return "ok", []


def newest_release_audit(
    pins: dict[str, str], ignored: list[str]
) -> tuple[str, list[str], list[str]]:
    """PyPI's per-project JSON lists the advisories of the newest release only."""

    def fetch(name: str) -> tuple[str, dict[str, object] | None]:
        try:
            with urllib.request.urlopen(f"{PYPI}/{name}/json", timeout=30) as r:  # noqa: S310
                return name, json.load(r)
        except (urllib.error.URLError, OSError, TimeoutError, ValueError):
            return name, None

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = dict(pool.map(fetch, sorted(pins)))
    if all(a is None for a in answers.values()):
        return "unreachable", [], []
    found, uncovered = [], []
    for name, data in sorted(answers.items()):
        if data is None:
            uncovered.append(f"{name}=={pins[name]} (no answer)")
            continue
        info = data.get("info")
        latest = str(info.get("version")) if isinstance(info, dict) else ""
        if Version(latest) != Version(pins[name]):
            uncovered.append(f"{name}=={pins[name]} (newest is {latest})")
            continue
        vulns = data.get("vulnerabilities") or []
        assert isinstance(vulns, list)
        for vuln in vulns:
            ids = [vuln.get("id", "?"), *(vuln.get("aliases") or [])]
            if vuln.get("withdrawn") or any(i in ignored for i in ids):
                continue
            fixes = ", ".join(vuln.get("fixed_in") or []) or "no fixed release"
            found.append(f"{name}=={pins[name]}: {', '.join(ids)} fixed in: {fixes}")
    return ("vulnerable" if found else "ok"), found, uncovered


def banner(lines: list[str]) -> None:
    width = max(len(line) for line in lines) + 4
    print("!" * width, *(f"! {line}" for line in lines), "!" * width, sep="\n", flush=True)


def main() -> int:
    require = "--require" in sys.argv[1:] or os.environ.get("CALSYNC_AUDIT") == "require"
    ignored = os.environ.get("CALSYNC_AUDIT_IGNORE", "").split()
    problems, pins = offline_checks()
    if problems:
        for p in problems:
            say(p)
        say("FAILED: the lock files do not match pyproject.toml")
        return 1
    say(f"offline: {len(pins)} pins, all hashed, consistent with pyproject.toml")
    if ignored:
        say(f"ignoring, as asked by CALSYNC_AUDIT_IGNORE: {' '.join(ignored)}")

    osv_url = os.environ.get("CALSYNC_AUDIT_OSV_URL")
    sources: list[tuple[str, str | None]] = []
    unreached = []
    if not osv_url:
        some, version = next(iter(sorted(pins.items())))
        answer = http_status(f"{PYPI}/{some}/{version}/json")
        if answer == 200:
            sources.append(("pypi", None))
        else:
            unreached.append(f"PyPI per-release JSON API ({answer or 'no answer'} for {some})")
    probe = json.dumps({"package": {"name": "pip", "ecosystem": "PyPI"}, "version": "0"})
    if http_status(osv_url or OSV, probe.encode()) is not None:
        sources.append(("osv", osv_url))
    else:
        unreached.append(f"OSV at {osv_url or OSV} (no answer)")
    for service, url in sources:
        label = f"pip-audit --vulnerability-service {service}" + (f" ({url})" if url else "")
        status, lines = pip_audit(service, url, ignored)
        if status == "ok":
            say(f"{len(pins)} locked packages, no known vulnerabilities ({label})")
            return 0
        if status == "vulnerable":
            for line in lines:
                say(line)
            say(f"FAILED: known vulnerabilities in the lock ({label}); raise the floor in")
            say("pyproject.toml or run ./scripts/lock --upgrade-package NAME, then re-run")
            return 1
        if status == "error":
            for line in lines:
                say(line)
            say(f"FAILED: {label} could not audit the lock")
            return 1
        unreached.append(label)

    if not osv_url:
        status, found, uncovered = newest_release_audit(pins, ignored)
        label = "PyPI per-project JSON, newest-release advisories"
        if status == "vulnerable":
            for line in found:
                say(line)
            say(f"FAILED: known vulnerabilities in the lock ({label})")
            return 1
        if status == "ok":
            covered = len(pins) - len(uncovered)
            say(f"{covered} of {len(pins)} locked packages: no known vulnerabilities ({label})")
            if not uncovered:
                return 0
            lines = [
                f"AUDIT INCOMPLETE: {len(uncovered)} pins are not their package's newest release",
                "and no per-release database answered, so these were NOT audited:",
                *(f"  {u}" for u in uncovered),
                "./scripts/lock --upgrade takes the newest releases the other pins allow;",
                "check the rest by hand (docs/security.md) or run ./scripts/audit --require",
                "where PyPI's per-release API or OSV is reachable.",
            ]
            banner(lines)
            return 1 if require else 0
        unreached.append(label)

    lines = [
        "VULNERABILITY AUDIT NOT RUN: no vulnerability database answered from here",
        *(f"  tried: {u}" for u in unreached or ["(nothing reachable to try)"]),
        "Only the offline checks ran. On a machine with internet: ./scripts/audit --require",
    ]
    banner(lines)
    return 1 if require else 0


if __name__ == "__main__":
    sys.exit(main())
