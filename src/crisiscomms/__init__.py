"""crisiscomms: relay official crisis updates to our channels, exactly once, with an audit trail."""

from __future__ import annotations

import os

__version__ = "0.1.0"

# pydantic hands every installed plugin (the ``pydantic`` entry point group: an observability
# package's, say) each input it validates: for the settings, the raw environment values, secrets
# among them, before they are ``SecretStr``. None is loaded in any process that imports
# crisiscomms (its children inherit this); pydantic reads the variable whenever a model is
# built. It also saves the entry point scan (about 16 ms of every command).
# tests/security/test_pydantic_plugins.py.
os.environ["PYDANTIC_DISABLE_PLUGINS"] = "__all__"
