"""Import paths that moved, kept working for one release with a ``DeprecationWarning``.

In 0.2 the exporters of each capability moved out of ``repvit.export`` (which kept the format
backends) into the capability that owns the model, and the clocks and thread choice moved beside the
engine. ``MODULES`` maps each old module path to its new one; an import of an old path (``import``,
``from ... import``) loads the new module under the old name, once, and warns. ``ATTRIBUTES`` does
the same for names a package used to define itself. Both go in 0.3.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

MODULES = {
    "repvit.export.sam": "repvit.sam.export",
    "repvit.export.sam_decoder": "repvit.sam.decoder_graph",
    "repvit.export.sam_parity": "repvit.sam.export_parity",
    "repvit.export.sam_files": "repvit.sam.exported",
    "repvit.export.sam_openvino": "repvit.sam.export_openvino",
    "repvit.export.sam_litert": "repvit.sam.export_litert",
    "repvit.export.sam_int8": "repvit.sam.export_int8",
    "repvit.export.edgetam_graphs": "repvit.edgetam.graphs",
    "repvit.export.edgetam": "repvit.edgetam.export",
    "repvit.export.edgetam_coreml": "repvit.edgetam.export_coreml",
    "repvit.export.edgetam_loop": "repvit.edgetam.onnx_predictor",
    "repvit.export.dense": "repvit.dense.export",
    "repvit.export.qat": "repvit.engine.qat",
    "repvit.runtime.timing": "repvit.engine.timing",
}

ATTRIBUTES = {
    "repvit.export": {name: "repvit.classification.export" for name in
                      ("export_model", "ExportResult", "INT8_FORMATS")},
    "repvit.dense.export": {"ExportedSegmenter": "repvit.segmentation.exported",
                            "export_detector_torchscript": "repvit.detection.export"},
}


def _warn(old: str, new: str, stacklevel: int = 3) -> None:
    warnings.warn(f"{old} moved to {new}; the old path goes in repvit 0.3", DeprecationWarning, stacklevel=stacklevel)


def moved_attribute(module: str, name: str):
    """``module.name`` for a name ``module`` no longer defines (its ``__getattr__`` calls this)."""
    new = ATTRIBUTES.get(module, {}).get(name)
    if new is None:
        raise AttributeError(f"module {module!r} has no attribute {name!r}")
    _warn(f"{module}.{name}", f"{new}.{name}", stacklevel=4)
    return getattr(importlib.import_module(new), name)


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        if fullname in MODULES:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        _warn(spec.name, MODULES[spec.name])
        module = importlib.import_module(MODULES[spec.name])
        self._own = (module.__spec__, module.__loader__)
        return module

    def exec_module(self, module):
        # the new module ran when it was imported; importlib stamped the old name's spec on it: undo that
        module.__spec__, module.__loader__ = self._own


def install() -> None:
    if not any(isinstance(finder, _Alias) for finder in sys.meta_path):
        sys.meta_path.append(_Alias())
