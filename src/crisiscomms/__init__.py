"""crisiscomms: relay official crisis updates to our channels, exactly once, with an audit trail."""

from __future__ import annotations

__version__ = "0.1.0"
