"""The ``repvit`` command line, laid out as the CLI is (see docs/cli.md and ``repvit.cli``).

- A single command is a module here: ``train.py`` is ``repvit train``, ``bench.py`` is
  ``repvit bench`` ... each defines ``register(subparsers)``.
- A command group with actions is a folder: ``detect/``, ``segment/``, ``sam/``; its
  ``__init__.py`` registers the group and a module per action (``sam/eval.py`` is
  ``repvit sam eval``) defines ``register(actions)``.
- The ``_`` prefix means one thing only: shared by several commands or actions, not a command
  itself (``_grammar.py``: the shared options and their one meaning; ``_weights.py``: how
  classifier commands name weights; ``_dense.py``: what ``detect`` and ``segment`` share;
  ``sam/_common.py``: what the ``sam`` actions share). ``repvit.cli`` registers every module or
  folder here whose name has no ``_`` prefix.
"""
