#!/usr/bin/env python3
"""Print the failed tests of a pytest JUnit XML file, last, where a CI log's tail shows them.

Molecule runs its destroy step after the verifier, so pytest's own summary scrolls out of a short
log tail; `make molecule` calls this when the scenario fails.
"""
import sys
import xml.etree.ElementTree as ET


def main(path: str) -> int:
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as exc:
        print(f"no test results to summarise ({path}: {exc})")
        return 1
    failed = 0
    for case in root.iter("testcase"):
        for kind in ("failure", "error"):
            for item in case.findall(kind):
                failed += 1
                name = f"{case.get('classname')}::{case.get('name')}"
                message = (item.get("message") or "").strip().splitlines()
                text = (item.text or "").strip().splitlines()
                print(f"{kind.upper()} {name}")
                for line in (message[:3] or []) + text[-25:]:
                    print(f"    {line[:300]}")
    total = sum(1 for _ in root.iter("testcase"))
    print(f"{failed} of {total} Molecule verifier tests failed or errored ({path})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
