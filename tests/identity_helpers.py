"""Tests act as a given OS user: the operator is the real user (``os.getuid`` and its passwd
entry), never an environment variable, so that is what a test changes."""

from __future__ import annotations

import os
import pwd

import pytest


def become(monkeypatch: pytest.MonkeyPatch, name: str, *, uid: int = 1000) -> None:
    """From here on in this test, the real OS user is ``name`` (uid ``uid``; 0 is root)."""
    real = pwd.getpwuid

    def getpwuid(u: int) -> pwd.struct_passwd:
        if u != uid:
            return real(u)
        return pwd.struct_passwd((name, "x", uid, uid, name, f"/home/{name}", "/bin/sh"))

    monkeypatch.setattr(os, "getuid", lambda: uid)
    monkeypatch.setattr(pwd, "getpwuid", getpwuid)
