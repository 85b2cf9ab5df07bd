"""The top-level package: lazy public names."""

import subprocess
import sys

import pilot


def test_public_names_resolve_and_are_listed_once():
    for name in pilot.__all__:
        assert getattr(pilot, name) is not None
    names = dir(pilot)
    assert len(names) == len(set(names))
    assert set(pilot.__all__) <= set(names)


def test_import_stays_light():
    code = "import sys, pilot; print(any(m.startswith('torch') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
