"""Every role's meta/argument_specs.yml says what its defaults/main.yml holds (the generator's check)."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_roles_argument_specs_are_in_step_with_its_defaults():
    out = subprocess.run([sys.executable, "scripts/role-argument-specs.py", "--check"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
