#!/usr/bin/env python3
"""The exact packages (name==version, one per line) the VibeVoice engine needs on a GPU machine besides
torch: the service's [vibevoice] extra and everything it requires, as installed in this venv (the
versions the tests ran), without torch and what only torch needs (its CUDA build is the machine's).
`make gpu-wheels` downloads them as wheels for the GPU machine's Python, to carry there."""
from __future__ import annotations

import re
from importlib.metadata import PackageNotFoundError, distribution

ROOTS = ["tts-service[vibevoice]"]
# torch and its own dependencies: the GPU machine's torch brings them (the CUDA build is gigabytes);
# numpy too: every torch image carries it (16 MB, a quarter of what a device call may carry).
TORCH_SIDE = re.compile(r"^(torch|numpy|triton|nvidia-.*|cuda-.*|sympy|mpmath|networkx|jinja2|markupsafe|setuptools)$")


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure() -> dict[str, str]:
    found: dict[str, str] = {}
    todo = list(ROOTS)
    while todo:
        spec = todo.pop()
        m = re.match(r"^\s*([A-Za-z0-9_.\-]+)(\[([^\]]+)\])?", spec)
        name, extras = norm(m.group(1)), {e.strip() for e in (m.group(3) or "").split(",") if e.strip()}
        if TORCH_SIDE.match(name):
            continue
        try:
            dist = distribution(name)
        except PackageNotFoundError:      # a marker-only requirement for another platform
            continue
        if name != "tts-service":
            if name in found:
                continue
            found[name] = dist.version
        for req in dist.requires or []:
            body, _, marker = req.partition(";")
            marker = marker.strip()
            wanted = not marker
            for extra in extras:
                if f'extra == "{extra}"' in marker:
                    wanted = True
            if marker and "extra ==" not in marker:
                wanted = _marker_ok(marker)
            if wanted:
                todo.append(body)
    return found


def _marker_ok(marker: str) -> bool:
    try:
        from packaging.markers import Marker
        return Marker(marker).evaluate({"extra": ""})
    except Exception:
        return True


if __name__ == "__main__":
    for name, version in sorted(closure().items()):
        print(f"{name}=={version}")
