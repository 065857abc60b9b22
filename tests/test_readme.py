"""The README's embedding example runs as written (against a temporary store)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_readme_embedding_example_runs(tmp_path: Path) -> None:
    text = (ROOT / "README.md").read_text()
    (code,) = re.findall(r"```python\n(.*?)```", text, flags=re.S)[:1]
    assert 'store="sqlite:///jobs.db"' in code
    script = tmp_path / "example.py"
    script.write_text(code.replace("sqlite:///jobs.db", f"sqlite:///{tmp_path / 'jobs.db'}"))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert "1000 new, 0 already known" in out
    assert "<JobState.SUCCEEDED: 'succeeded'>: 1000" in out


def test_readme_memory_store_example_runs(tmp_path: Path) -> None:
    text = (ROOT / "README.md").read_text()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", text, flags=re.S)
              if "MemoryStore()" in b]
    assert len(blocks) == 1
    script = tmp_path / "example.py"
    script.write_text(blocks[0] + "\nimport anyio\nanyio.run(test_double)\nprint('ok')\n")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert out.strip() == "ok"
