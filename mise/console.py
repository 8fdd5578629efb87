"""How the three commands (`training/train.py`, `training/study.py` and `mise`) end and what they draw.

One error convention:

- exit 2: a usage or configuration error (:class:`UsageError`: a flag, config field, file or folder that is wrong
  or missing); the message names the flag, field or file, and nothing has run;
- exit 1: a data error (any other ``ValueError`` or ``OSError``: a manifest row, an unreadable clip, a class too
  small) or a run that failed on its way (a NaN loss); the message names the file, row or fold;
- one line on stderr, no traceback, unless ``--debug`` is on the command line or ``MISE_DEBUG=1`` is set.

Progress bars are drawn on a terminal only: a log redirected to a file gets the log lines, not bar frames.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence

USAGE_EXIT, DATA_EXIT = 2, 1
DEBUG_FLAG, DEBUG_VARIABLE = "--debug", "MISE_DEBUG"
_FALSE = ("", "0", "false", "False", "no")


class UsageError(ValueError):
    """A usage or configuration error: the command line or config names a wrong or missing flag, field or file.

    A ``ValueError``, so library callers that catch ``ValueError`` keep working; the commands exit 2 with it."""


def debug_requested(argv: Sequence[str]) -> bool:
    """Whether a traceback was asked for: ``--debug`` in ``argv`` or ``MISE_DEBUG`` set to a true value."""
    return DEBUG_FLAG in argv or os.environ.get(DEBUG_VARIABLE, "") not in _FALSE


def run_command(
    main: Callable[[list[str]], object],
    prefix: str,
    argv: Sequence[str] | None = None,
    usage_errors: tuple[type[BaseException], ...] = (),
    data_errors: tuple[type[BaseException], ...] = (),
) -> int:
    """Run ``main(argv without --debug)`` and turn its errors into the convention's exit code and one line
    ``<prefix>: <message>`` on stderr; returns the exit code (``main``'s when it returns an int, else 0).

    ``usage_errors`` / ``data_errors``: further exception types of the command that exit 2 / 1 (e.g. training's
    NaN loss). With ``--debug`` or ``MISE_DEBUG=1`` an error is raised as it is, with its traceback.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(argv)
    argv = [arg for arg in argv if arg != DEBUG_FLAG]
    try:
        code = main(argv)
        return code if isinstance(code, int) else 0
    except (UsageError, *usage_errors) as error:
        code = USAGE_EXIT
        if debug:
            raise
        message = error
    except (ValueError, OSError, *data_errors) as error:
        code = DATA_EXIT
        if debug:
            raise
        message = error
    print(f"{prefix}: {message}", file=sys.stderr)
    return code


def progress_bars(quiet: bool = False) -> bool:
    """Whether to draw progress bars: on a terminal (stderr) and not ``quiet``.

    When not, the libraries' own bars are switched off as well (transformers' "Loading weights", `datasets`'
    maps, Hub downloads), in this process and in the processes it starts."""
    show = not quiet and sys.stderr.isatty()
    if not show:
        for variable in ("HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS"):
            os.environ[variable] = "1"
        for module, function in (
            ("huggingface_hub.utils", "disable_progress_bars"),
            ("transformers.utils.logging", "disable_progress_bar"),
            ("datasets.utils.tqdm", "disable_progress_bars"),
        ):
            if module in sys.modules:  # imported before the variables were set
                getattr(sys.modules[module], function)()
    return show
