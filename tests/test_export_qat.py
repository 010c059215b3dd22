"""Quantization-aware fine-tuning for the PT2E INT8 exports (repvit.engine.qat): what is trained is what
the file computes, on a task the untrained model cannot do, through ExecuTorch (CI) and LiteRT (the
litert extra)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from repvit.engine.qat import QATSetting
from repvit.segmentation.data import ResizeFlip

SIZE = 24


class RedOrGreen:
    """Random images whose pixels are class 1 where red beats green, else 0 (the engine's ``get`` convention)."""

    def __init__(self, count: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.images = torch.rand(count, 3, SIZE, SIZE, generator=g)
        self.labels = (self.images[:, 0] > self.images[:, 1]).long()

    def __len__(self):
        return len(self.images)

    def get(self, index, generator):
        return self.images[index], self.labels[index]


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 2, 1)).eval()


def _accuracy(run, data: RedOrGreen) -> float:
    logits = torch.cat([run(data.images[k:k + 1]) for k in range(len(data))])
    return (logits.argmax(1) == data.labels).float().mean().item()


def _setting(train):
    return QATSetting(train, lambda logits, label: F.cross_entropy(logits, label), epochs=6, lr=3e-2, seed=1)


def _learns(export, runner, tmp_path, suffix):
    """A QAT file beats the post-training file of the same untrained model by a wide margin on held-out
    images, and the loss of the fine-tune fell."""
    train, held_out = RedOrGreen(32, seed=0), RedOrGreen(16, seed=1)
    ptq = export(_model(), tmp_path / f"ptq.{suffix}", calibration=[train.images[k:k + 1].numpy() for k in range(8)])
    setting = _setting(train)
    qat = export(_model(), tmp_path / f"qat.{suffix}", qat=setting)
    before, after = _accuracy(runner(ptq), held_out), _accuracy(runner(qat), held_out)
    # (the output's fake-quant range starts at the untrained logits' and widens slowly: the loss falls less
    # than in float, the argmax learns all the same)
    assert setting.report["steps"] == 6 * 32 and setting.report["loss_last"] < 0.85 * setting.report["loss_first"]
    assert after > 0.9 and after > before + 0.3, (before, after)


def test_executorch_qat_file_computes_what_was_trained(tmp_path):
    from repvit.export import executorch as fmt_et
    if not fmt_et.available():
        pytest.skip("the executorch extra is not installed: pip install 'repvit-pytorch[executorch]'")

    def export(model, path, **int8):
        return fmt_et.export_executorch(model, path, img_size=SIZE, metadata={"task": "test"}, **int8)[0]
    _learns(export, fmt_et.runner, tmp_path, "pte")
    with pytest.raises(ValueError, match="either calibrated"):
        export(_model(), tmp_path / "both.pte", calibration=[np.zeros((1, 3, SIZE, SIZE), np.float32)],
               qat=_setting(RedOrGreen(2, 0)))


def test_litert_qat_file_computes_what_was_trained(tmp_path):
    from repvit.export import litert as fmt_lt
    if not fmt_lt.available():
        pytest.skip("the litert extra is not installed: pip install 'repvit-pytorch[litert]'")

    def export(model, path, **int8):
        return fmt_lt.export_litert(model, path, img_size=SIZE, **int8)
    _learns(export, fmt_lt.runner, tmp_path, "tflite")


def test_qat_setting_refuses_what_cannot_train():
    with pytest.raises(ValueError, match="has none"):
        QATSetting(RedOrGreen(0, 0), F.cross_entropy)
    with pytest.raises(ValueError, match="epochs must be > 0"):
        QATSetting(RedOrGreen(2, 0), F.cross_entropy, epochs=0)
    with pytest.raises(ValueError, match="learning rate must be > 0"):
        QATSetting(RedOrGreen(2, 0), F.cross_entropy, lr=-1)
    assert QATSetting(RedOrGreen(10, 0), F.cross_entropy, epochs=0.25).steps == 2


def test_qat_samples_at_another_size_are_refused():
    pytest.importorskip("executorch", reason="the executorch extra (its XNNPACK quantizer) is not installed")
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (XNNPACKQuantizer,
                                                                        get_symmetric_quantization_config)

    from repvit.engine.qat import fine_tune
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_qat=True))
    with pytest.raises(ValueError, match=r"is \(24, 24\), the exported graph takes \(16, 16\)"):
        fine_tune(_model(), (torch.rand(1, 3, 16, 16),), quantizer, _setting(RedOrGreen(2, 0)))


def test_resize_flip_keeps_image_and_label_together():
    label = torch.arange(6).repeat(4, 1)                      # 4x6, columns 0..5
    image = (label.float() / 10).expand(3, 4, 6).clone()
    flips = set()
    for seed in range(8):
        im, lab = ResizeFlip((4, 6))(image, label, torch.Generator().manual_seed(seed))
        assert torch.equal((im[0] * 10).round().long(), lab)
        flips.add(int(lab[0, 0]))
    assert flips == {0, 5}                                    # both outcomes drawn
    im, lab = ResizeFlip((8, 12))(image, label, torch.Generator().manual_seed(0))
    assert im.shape == (3, 8, 12) and lab.shape == (8, 12) and lab.dtype == torch.long
    assert set(lab.unique().tolist()) == set(range(6))        # nearest: no invented classes
    with pytest.raises(ValueError, match="height, width"):
        ResizeFlip((0, 4))


def test_a_qat_run_is_a_function_of_its_seed():
    """Whatever the caller's random state, the same seed gives the same weights and another seed others,
    and the caller's generator is left as it was (preparing the graph draws from it)."""
    pytest.importorskip("executorch", reason="the executorch extra (its XNNPACK quantizer) is not installed")
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (XNNPACKQuantizer,
                                                                        get_symmetric_quantization_config)

    from repvit.engine.qat import fine_tune

    def run(seed, caller_state):
        model = _model()
        quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_qat=True))
        setting = QATSetting(RedOrGreen(4, 0), lambda logits, label: F.cross_entropy(logits, label), lr=1e-2, seed=seed)
        example = (torch.rand(1, 3, SIZE, SIZE),)
        torch.manual_seed(caller_state)
        before = torch.get_rng_state()
        graph = fine_tune(model.eval(), example, quantizer, setting)
        assert torch.equal(torch.get_rng_state(), before)      # the caller's generator is left where it was
        return torch.cat([p.detach().flatten() for p in graph.parameters()])

    a, b, c = run(0, caller_state=1), run(0, caller_state=2), run(1, caller_state=1)
    assert torch.equal(a, b) and not torch.equal(a, c)
