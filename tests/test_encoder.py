"""`ssljax.load_encoder`: the package attribute stays lazy (its use is in test_export.py)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_import_ssljax_loads_neither_jax_nor_torch_until_load_encoder_is_used():
    code = (
        "import sys, ssljax; heavy = {'jax', 'torch', 'tensorflow'} & set(sys.modules); "
        "assert not heavy, heavy; f = ssljax.load_encoder; assert 'jax' in sys.modules; "
        "assert 'torch' not in sys.modules; print(f.__module__)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ssljax.export.encoder"
