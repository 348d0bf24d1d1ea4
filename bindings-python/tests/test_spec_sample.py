"""The spec's Python sample runs as written, from examples/spec, as a user would run it."""

import os
import subprocess
import sys

from conftest import REPO


def test_the_spec_python_sample_runs_as_written() -> None:
    spec = REPO / "examples" / "spec"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(
        [sys.executable, str(spec / "python" / "spec_sample.py")],
        cwd=spec,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, f"stdout:\n{out.stdout}\nstderr:\n{out.stderr}"
    assert "read via the spec worker: 'hello from the spec example\\nsecond line\\n'" in out.stdout
    assert "missing file reported by the worker:" in out.stdout
    assert "bash via the spec worker: 'from bash\\n'" in out.stdout
    assert "Total processed: 14" in out.stdout
    assert "Success rate: 85.71%" in out.stdout
    assert "P99 latency:" in out.stdout
    assert out.stdout.rstrip().endswith("spec sample OK")


def test_the_readme_python_snippet_runs() -> None:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Use it from Python", 1)[1]
    snippet = section.split("```python\n", 1)[1].split("```", 1)[0]
    out = subprocess.run(
        [sys.executable, "-c", snippet],
        cwd=REPO / "examples" / "spec",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("hello from the spec example\nsecond line\n")
