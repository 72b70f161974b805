"""Build hook: the wheel carries the repository's top-level `tasks/` and `checkpoints/` card folders.

The cards live at the top of the repository, where people edit them; an installed sparc-eval reads them
from `sparc_eval/builtin/` (sparc_eval.builtin.builtin_dir), so they are copied there at build time.
Everything else about the build is in pyproject.toml. MANIFEST.in puts the same folders into the sdist.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

CARD_FOLDERS = ("tasks", "checkpoints")


class BuildPyWithCards(build_py):
    def run(self) -> None:
        super().run()
        for name in CARD_FOLDERS:
            shutil.copytree(Path(name), Path(self.build_lib) / "sparc_eval" / "builtin" / name, dirs_exist_ok=True)


setup(cmdclass={"build_py": BuildPyWithCards})
