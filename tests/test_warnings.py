"""Our own code issues no warnings: importing every module and a representative path, in a fresh process.

``python -W error::Warning:tempme_composer`` is not the tool: its module field must equal the issuing module's
whole name, so it misses ``tempme_composer.clip.weights`` and every other submodule. Instead the script
records every warning (``warnings.catch_warnings(record=True)`` with the ``always`` action) and keeps those
whose reported file lies inside the package. A warning's file is the frame its issuer's ``stacklevel`` names —
the one a ``-W``/``filterwarnings`` module filter would match — so a deprecated torch API called by our code
(torch warns with ``stacklevel=2``, and C++ warnings name the calling Python frame) counts as ours, while a
warning torch raises about itself does not. A control warning issued under a package file name checks that
the attribution finds what it should.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parent / 'scripts' / 'warnings_on_our_path.py'
PACKAGE = Path(__file__).resolve().parents[1] / 'tempme_composer'


def test_our_code_issues_no_warnings(tmp_path):
    out, scratch = tmp_path / 'warnings.json', tmp_path / 'scratch'
    scratch.mkdir()
    env = {**os.environ, 'PYTHONPATH': str(PACKAGE.parent)}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(out), str(scratch)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    modules = [p for p in PACKAGE.rglob('*.py') if p.name != '__main__.py']
    assert result['modules'] == len(modules) - 1  # every module but the package's own __init__
    assert [w['message'] for w in result['control']] == ['control']
    assert result['ours'] == [], '\n'.join(
        f'{w["file"]}:{w["line"]}: {w["category"]}: {w["message"]}' for w in result['ours']
    )
