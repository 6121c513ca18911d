"""Running the short host commands (`ip`, `nft`, `tc`) the rig is made of."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence


class RigError(RuntimeError):
    """A rig command failed; the message carries the command and its stderr."""


def sh(
    argv: Sequence[str],
    *,
    input: str | None = None,
    timeout: float = 20.0,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run a short command to completion, text output captured.

    Raises RigError (with the command line and stderr) when it fails and `check` is set,
    or when it does not finish within `timeout` seconds.
    """
    try:
        res = subprocess.run(
            list(argv),
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise RigError(f"timed out after {timeout}s: {' '.join(argv)}") from exc
    except FileNotFoundError as exc:
        raise RigError(f"command not found: {argv[0]}") from exc
    if check and res.returncode != 0:
        detail = (res.stderr or res.stdout).strip()
        raise RigError(f"exit {res.returncode}: {' '.join(argv)}: {detail}")
    return res


def nft(ns: str, script: str) -> None:
    """Apply an nftables script atomically inside namespace `ns`."""
    sh(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=script)
