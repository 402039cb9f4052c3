"""Our own code issues no warnings: importing every module and a representative path, in a fresh process.

``python -W error::Warning:tempme_composer`` is not the tool: its module field must equal the issuing module's
whole name, so it misses ``tempme_composer.clip.weights`` and every other submodule; and a filter matches only
the frame the issuer's ``stacklevel`` names, while torch 2.15 reports ``torch.jit.load is deprecated`` at its
own line. So the script (tests/scripts/warnings_on_our_path.py) records every warning with the call stack at
the moment it is issued, and calls it ours when it is reported inside the package, or inside a library whose
nearest caller outside that library is ours: a deprecated API we call counts, a warning a library raises about
its own internals does not. Controls issued under borrowed file names show the attribution telling the two
apart.
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
    assert result['control'] == ['reported here', 'library called by us']
    assert result['ours'] == [], '\n'.join(
        f'{w["file"]}:{w["line"]}: {w["category"]}: {w["message"]}' for w in result['ours']
    )
