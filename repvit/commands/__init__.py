"""Sub-commands of the ``repvit`` CLI, one module each (see ``repvit.cli``)."""
