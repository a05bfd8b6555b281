"""A pydantic plugin never sees a secret.

pydantic loads every plugin installed in the environment (the ``pydantic`` entry point group)
and hands it each input it validates: for the settings, the raw environment values, secrets
included, before they become ``SecretStr``. An observability plugin (logfire's, for one) would
send them on. The CLI therefore runs with pydantic's plugins off (``PYDANTIC_DISABLE_PLUGINS``).
The spy below is a real plugin, installed as a distribution on ``PYTHONPATH``: it is seen being
loaded (the control run), then not loaded by any crisiscomms command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SECRET = "sk-plugin-spy-2f9c41"

SPY = '''
import os

def _note(text):
    with open(os.environ["SPY_OUT"], "a", encoding="utf-8") as f:
        f.write(text + "\\n")

class _OnValidatePython:
    def on_enter(self, input, **kwargs):
        _note("input " + repr(input))

class Spy:
    def new_schema_validator(self, schema, schema_type, schema_type_path, schema_kind,
                             config, plugin_settings):
        _note("validator " + str(schema_type_path))
        return _OnValidatePython(), None, None

plugin = Spy()
'''


def _install_spy(where: Path) -> None:
    (where / "pydantic_spy.py").write_text(SPY)
    dist = where / "pydantic_spy-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: pydantic-spy\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[pydantic]\nspy = pydantic_spy:plugin\n")


def _run(code: str, tmp_path: Path, home: Path) -> str:
    out = tmp_path / "spy.txt"
    out.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site"), "SPY_OUT": str(out),
           "CRISISCOMMS_HOME": str(home), "CRISISCOMMS_X_BEARER_TOKEN": SECRET,
           "CRISISCOMMS_NOTIFY_URLS": f"json://localhost:9/{SECRET}"}
    env.pop("PYDANTIC_DISABLE_PLUGINS", None)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert SECRET not in proc.stdout + proc.stderr
    return out.read_text() if out.exists() else ""


def test_no_pydantic_plugin_sees_the_settings(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    _install_spy(site)
    home = tmp_path / "home"
    # Control: the spy is installed and pydantic loads it, so it would see what is validated.
    control = _run("from pydantic import BaseModel\n"
                   "class M(BaseModel):\n    token: str\n"
                   f"M(token={SECRET!r})", tmp_path, home)
    assert "validator" in control and SECRET in control
    # Every command goes through the CLI's entry point: settings loaded, secrets among them.
    for args in (["status"], ["playbooks", "check"], ["--help"]):
        seen = _run("import sys\nfrom crisiscomms.cli import main\n"
                    f"main({args!r})", tmp_path, home)
        assert seen == "", f"crisiscomms {' '.join(args)}: a pydantic plugin was loaded: {seen}"
