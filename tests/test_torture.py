"""kill -9 torture (contract section 4 and "Crash durability"): SIGKILL a real server at random
moments while agents stream, run tools and wait on approvals; after every restart nothing
acknowledged is lost, seqs are gapless and never reused, the store is consistent, the
status matches reality and every agent runs on.

The driver is `bench/torture.py` (`python bench/torture.py --kills 200` by hand). Here:
`KODE_TORTURE_KILLS` (default 12) kills, seed `KODE_TORTURE_SEED` (random unless given,
printed with the tally).
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

KILLS = int(os.environ.get("KODE_TORTURE_KILLS") or 12)


def _driver():  # type: ignore[no-untyped-def]
    path = Path(__file__).resolve().parent.parent / "bench" / "torture.py"
    spec = importlib.util.spec_from_file_location("kode_torture", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve string annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(max(180, KILLS * 15))
async def test_sigkill_torture(tmp_path: Path) -> None:
    torture = _driver()
    env_seed = os.environ.get("KODE_TORTURE_SEED")
    seed = int(env_seed) if env_seed else random.SystemRandom().randrange(2**32)
    tally = await torture.run_torture(KILLS, seed=seed, root=tmp_path / "torture")
    report = json.dumps(asdict(tally), indent=2)
    print(report)
    assert tally.kills == KILLS
    assert tally.resumes >= tally.kills, "every kill was followed by resumes of the agents it left behind"
    assert tally.problems() == {k: 0 for k in torture.PROBLEMS}, f"seed {seed} (rerun: KODE_TORTURE_SEED={seed}):\n{report}"
