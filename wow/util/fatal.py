"""Ending a daemon or command with one clear sentence instead of a traceback."""

from __future__ import annotations

import os
from typing import NoReturn


def fatal(program: str, sentence: str, code: int = 1) -> NoReturn:
    """
    Write C{program: sentence} to the real standard error and exit.

    We write to file descriptor 2 directly because twistd may have redirected
    C{sys.stderr} into its log by the time a service starts.
    """
    os.write(2, f"{program}: {sentence.rstrip('.')}.\n".encode())
    raise SystemExit(code)
