"""Shared fixtures. Network tests use 127.0.0.1 only (or namespaces the rig creates)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("PYTHONUNBUFFERED", "1")
pytest_plugins = ["tests.netrig.fixtures"]
