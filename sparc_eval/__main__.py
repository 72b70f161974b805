"""`python -m sparc_eval ...` (e.g. under `torchrun -m sparc_eval run ...`): the same as `sparc-eval ...`."""

from sparc_eval.cli import main

main()
