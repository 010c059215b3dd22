"""``repvit info`` and ``repvit demo``: sizes come from the models, the demo proves fusion on the spot."""
from __future__ import annotations

import json
import subprocess
import sys

from repvit.cli import main
from repvit.models.skeleton import build_skeleton
from repvit.models.profile import count_params
from repvit.models.variants import VARIANTS


def test_info_json_is_computed_from_models(capsys):
    assert main(["info", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert main(["info"]) == 0
    table = capsys.readouterr().out
    assert "2,468,072" in table and "paper's figures" in table
    assert set(rows) == set(VARIANTS)
    assert rows["repvit_m1_5"]["params_train"] == count_params(build_skeleton("repvit_m1_5"))
    assert rows["repvit_m0_9"]["paper_top1_450e"] == 79.1 and rows["repvit_m2_3"]["paper_iphone12_ms"] == 2.3
    assert all(r["params_fused"] < r["params_train"] < r["params_train_dist"] for r in rows.values())


def test_module_entry_point():
    result = subprocess.run([sys.executable, "-m", "repvit", "demo", "--model", "repvit_m0_6", "--img-size", "32",
                             "--batch-size", "1"], capture_output=True, text=True)
    assert result.returncode == 0 and "max |unfused - fused|" in result.stdout


def test_demo_reports_fusion_parity(capsys):
    assert main(["demo", "--model", "repvit_m0_6", "--img-size", "64", "--batch-size", "2"]) == 0
    out = capsys.readouterr().out
    assert "BatchNorm left: False" in out and "OK" in out


def test_cli_error_is_clean(capsys):
    assert main(["demo", "--model", "repvit_x"]) == 2
    assert "unknown RepViT variant" in capsys.readouterr().err


def test_library_errors_name_their_origin_and_ours_stay_one_line(monkeypatch, capsys):
    import repvit.commands.info as info_command

    monkeypatch.setattr(info_command, "run", lambda args: json.loads("{"))  # a ValueError from the stdlib
    assert main(["info"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("repvit info: error: ") and "decoder.py" in err and "REPVIT_DEBUG=1" in err

    monkeypatch.setattr(info_command, "run", lambda args: build_skeleton("repvit_m9_9"))  # raised in repvit
    assert main(["info"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("repvit info: error: ") and "repvit_m9_9" in err and err.count("\n") == 1
