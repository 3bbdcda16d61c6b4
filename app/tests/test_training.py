"""The demo model reproduces: same seed, same weights, same accuracy (about 30 s)."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import MODEL_DIR, ROOT


def test_training_reproduces_the_committed_release(tmp_path):
    committed = json.loads((MODEL_DIR / "metadata.json").read_text())
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "train_digits.py"),
            "--version",
            "1",
            "--out",
            str(tmp_path / "models"),
            "--samples",
            str(tmp_path / "samples"),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    fresh = json.loads((tmp_path / "models" / "1" / "metadata.json").read_text())
    assert fresh["heldout_accuracy"] == committed["heldout_accuracy"]
    assert committed["heldout_accuracy"] >= 0.97
    assert fresh["weights_sha256"] == committed["weights_sha256"]
    for sample in (ROOT / "files" / "samples" / "digits").glob("*.png"):
        assert (tmp_path / "samples" / sample.name).read_bytes() == sample.read_bytes()
