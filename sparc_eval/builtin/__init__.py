"""Files sparc-eval ships besides code: task cards, checkpoint cards, class-name lists.

In the repository the task and checkpoint cards live at its top level (`tasks/`, `checkpoints/`), where
people edit them; a built wheel carries them here, as `sparc_eval/builtin/tasks` and
`sparc_eval/builtin/checkpoints` (setup.py), so an installed sparc-eval finds them from any folder.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent


def builtin_dir(name: str) -> Path:
    """The built-in card folder `name` ("tasks" or "checkpoints"): inside an installed wheel, else the checkout's."""
    installed = HERE / name
    return installed if installed.is_dir() else HERE.parents[1] / name
