"""Modules that moved in 0.2 keep their old import paths for one release, with a DeprecationWarning that
names the new path, and the old path gives the very module of the new one (one copy of its state)."""
from __future__ import annotations

import importlib
import subprocess
import sys
import warnings

import pytest

from repvit import _moved


_CHECK = """
import importlib, json, sys, warnings
import repvit
from repvit._moved import MODULES
out = {}
for old, new in MODULES.items():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(old)
    out[old] = {"warned": [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)],
                "same": module is importlib.import_module(new), "spec": module.__spec__.name, "name": module.__name__}
print(json.dumps(out))
"""


def test_an_old_module_path_is_the_new_module_and_warns():
    import json
    # a fresh interpreter, where no old path was imported yet, so each import really runs (and warns)
    out = subprocess.run([sys.executable, "-c", _CHECK], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert sorted(seen) == sorted(_moved.MODULES)
    for old, new in _moved.MODULES.items():
        assert f"{old} moved to {new}; the old path goes in repvit 0.3" in seen[old]["warned"], (old, seen[old])
        # the new module itself, under its own spec and name (not a second copy, not renamed by the alias)
        assert seen[old]["same"] and seen[old]["spec"] == new and seen[old]["name"] == new, (old, seen[old])


def test_from_import_of_an_old_submodule_and_an_old_attribute():
    from repvit.classification.export import ExportResult, export_model
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        from repvit.export import qat
        from repvit.export import ExportResult as OldResult, export_model as old_export
    assert qat is importlib.import_module("repvit.engine.qat")
    assert old_export is export_model and OldResult is ExportResult
    messages = [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)]
    assert any("repvit.export.export_model moved to repvit.classification.export.export_model" in m for m in messages)
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        importlib.import_module("repvit.export").not_a_name
    from repvit.segmentation.exported import ExportedSegmenter
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        from repvit.dense.export import ExportedSegmenter as old_segmenter
    assert old_segmenter is ExportedSegmenter and any("repvit.segmentation.exported" in str(w.message) for w in caught)


def test_every_new_path_exists_and_no_old_file_is_left():
    from pathlib import Path
    root = Path(_moved.__file__).parent.parent
    for old, new in _moved.MODULES.items():
        assert (root / (new.replace(".", "/") + ".py")).is_file(), new
        assert not (root / (old.replace(".", "/") + ".py")).exists(), f"{old} is both moved and present"
