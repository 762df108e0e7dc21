"""CI: the installed dependencies against known vulnerabilities (pip-audit, PyPI's advisory data).

Fails on any known vulnerability not listed, with a reason, in .ci/pip-audit-ignore.txt
("<advisory id>  <why it does not apply>" per line). When the vulnerability service cannot be
reached, or answers for none of our packages (a mirror without per-release data, an offline
machine), it says so plainly and skips rather than failing or pretending all is well.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PIP_AUDIT = Path(sys.executable).with_name("pip-audit")
UNREACHABLE = ("ConnectionError", "Max retries", "Name or service not known", "Temporary failure in name")


def ignored() -> dict[str, str]:
    path = HERE / "pip-audit-ignore.txt"
    if not path.exists():
        return {}
    entries = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            advisory, _, reason = line.partition(" ")
            if not reason.strip():
                sys.exit(f"pip-audit: {advisory} is ignored without a reason in {path}")
            entries[advisory] = reason.strip()
    return entries


def main() -> int:
    if not PIP_AUDIT.exists():
        print("pip-audit: not installed (pip install -r requirements-dev.txt)", file=sys.stderr)
        return 1
    result = subprocess.run(
        [str(PIP_AUDIT), "--format", "json", "--progress-spinner", "off"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if result.returncode not in (0, 1) or not result.stdout.strip():
        if any(marker in result.stderr for marker in UNREACHABLE):
            print("pip-audit SKIPPED: the vulnerability service (pypi.org) cannot be reached from here.")
            return 0
        print(result.stderr, file=sys.stderr)
        return result.returncode or 1
    dependencies = json.loads(result.stdout)["dependencies"]
    skipped = [d for d in dependencies if "skip_reason" in d]
    audited = len(dependencies) - len(skipped)
    if not audited:
        reason = skipped[0]["skip_reason"] if skipped else "no dependencies"
        print(
            f"pip-audit SKIPPED: the vulnerability service answered for none of the {len(dependencies)} "
            f"installed packages (e.g. {reason!r}); this machine's index serves no per-release "
            "advisory data. Run it where pypi.org is reachable."
        )
        return 0
    allowed = ignored()
    problems = []
    for dependency in dependencies:
        for vuln in dependency.get("vulns", []):
            ids = {vuln["id"], *vuln.get("aliases", [])}
            if ids & set(allowed):
                continue
            fixed = ", ".join(vuln.get("fix_versions", [])) or "no fix yet"
            problems.append(f"{dependency['name']} {dependency['version']}: {vuln['id']} (fixed in {fixed})")
    print(f"pip-audit: {audited} packages audited, {len(skipped)} could not be ({len(allowed)} ignored).")
    for problem in problems:
        print(f"  VULNERABLE {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
