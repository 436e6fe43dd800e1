import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Keep test processes from fighting over the 2 cores of CI machines.
os.environ.setdefault("OMP_NUM_THREADS", "2")
# Calibrations are also kept in the user's cache (harness/calibrate.py): tests, and the runs
# they start as subprocesses, must neither read the developer's nor leave their own there.
import tempfile  # noqa: E402

os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="harness-test-cache-")


@pytest.fixture
def write_suite(tmp_path):
    """Write a suite YAML into tmp_path and return its path."""

    def _write(text: str, name: str = "suite.yaml") -> Path:
        p = tmp_path / name
        p.write_text(text)
        return p

    return _write
