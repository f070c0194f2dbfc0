"""kamailio.cfg + stird.cfg pass Kamailio's own config check (``kamailio -c``) in every
combination of the defines an operator sets, and without the dialog module.

The preprocessor leaves a route body empty when all of it sits in a skipped
``#!ifdef``, and Kamailio refuses an empty route body: each combination is checked.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.kamailio.harness import KAM_DIR, tools

COMBINATIONS = {
    "shipped": [],
    "dialog policy": ["STIRD_DIALOG_POLICY"],
    "own dialog event routes": ["STIRD_DIALOG_POLICY", "STIRD_NO_DIALOG_EVENTS"],
    "relay baseline": ["BENCH_RELAY_ONLY"],
    "one PASSporT": ["STIRD_ONE_PASSPORT"],
    "one PASSporT, dialog policy": ["STIRD_ONE_PASSPORT", "STIRD_DIALOG_POLICY"],
}


def check(cfg: Path, defines: list[str]) -> subprocess.CompletedProcess[str]:
    argv = [tools().kamailio, "-c", "-f", str(cfg), "-L", str(tools().modules)]
    for name in defines:
        argv += ["-A", name]
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=30, check=False, cwd=cfg.parent
    )


@pytest.mark.parametrize("defines", COMBINATIONS.values(), ids=COMBINATIONS.keys())
def test_the_shipped_config_passes_the_check(defines: list[str]) -> None:
    done = check(KAM_DIR / "kamailio.cfg", defines)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.parametrize(
    "defines",
    [[], ["STIRD_DIALOG_POLICY"], ["STIRD_ONE_PASSPORT"]],
    ids=["shipped", "policy", "one PASSporT"],
)
def test_stird_cfg_without_the_dialog_module(tmp_path: Path, defines: list[str]) -> None:
    """A main file that does not load ``dialog``: stird.cfg's dialog parts drop out."""
    main = (KAM_DIR / "kamailio.cfg").read_text()
    main = main.replace('loadmodule "dialog.so"', "")
    main = "\n".join(line for line in main.splitlines() if 'modparam("dialog"' not in line)
    (tmp_path / "kamailio.cfg").write_text(main)
    shutil.copy(KAM_DIR / "stird.cfg", tmp_path / "stird.cfg")
    done = check(tmp_path / "kamailio.cfg", defines)
    assert done.returncode == 0, done.stderr[-3000:]
