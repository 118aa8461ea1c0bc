"""utils_cv silences fastai's torch.jit.script FutureWarning on import, and nothing else."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import warnings
import utils_cv.classification.train  # imports fastai, which calls torch.jit.script
import fastai.vision.all
# The same category from the same module with another message still shows:
warnings.warn_explicit("another torch.jit warning", FutureWarning, "x.py", 1,
                       module="torch.jit._script")
"""


def test_only_the_torch_jit_script_deprecation_is_filtered():
    # -W default shows every warning once, as a notebook shows warnings from our code.
    result = subprocess.run(
        [sys.executable, "-W", "default", "-c", SCRIPT], capture_output=True, text=True, check=True
    )
    assert "torch.jit.script` is deprecated" not in result.stderr
    assert "FutureWarning: another torch.jit warning" in result.stderr


def test_without_utils_cv_fastai_shows_it():
    """The warning is real (so the filter is needed): fastai alone raises it."""
    result = subprocess.run(
        [sys.executable, "-W", "default", "-c", "import fastai.vision.all"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "FutureWarning: `torch.jit.script` is deprecated" in result.stderr
