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


# --- exit ------------------------------------------------------------------------------------
# After a whole passing run, CI once saw the pytest process abort during interpreter
# finalization ("terminate called without an active exception", reported through llama.cpp's
# terminate handler), which turned "1236 passed" into a failed `make test`. The suspected cause
# (gc.freeze() of loaded records in this long-lived process, now done only by the report
# commands run as a program) is fixed; this keeps a native library's teardown order at exit
# from deciding CI regardless: once pytest has reported everything, the process ends with
# pytest's own status. HARNESS_TEST_FINALIZE=1 runs the normal finalization instead (to check
# whether the abort is gone).
_SESSION_STATUS: dict[str, int] = {}


def _pytest_is_the_program() -> bool:
    """pytest run as a command (`pytest`, `python -m pytest`), not pytest.main() called by
    another program that goes on after it (mutmut runs every mutant's tests that way: ending
    its process here killed `make mutation`)."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name in ("pytest", "pytest.__main__", "py.test"):
        return True
    return os.path.basename(sys.argv[0] if sys.argv else "") in ("pytest", "py.test")


def pytest_sessionfinish(session, exitstatus):
    _SESSION_STATUS["status"] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    if "status" in _SESSION_STATUS and os.environ.get("HARNESS_TEST_FINALIZE") != "1" \
            and not hasattr(config, "workerinput") and _pytest_is_the_program():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_SESSION_STATUS["status"])
