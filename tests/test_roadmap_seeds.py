"""benchmarks/roadmap_seeds.py: per-seed roadmap runs combine into means, spreads and paired changes."""
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import roadmap_seeds  # noqa: E402

BUDGET = {"data": "d", "img_size": 64, "epochs": 3, "batch_size": 32, "lr": 0.002}


def run(seed, top1s, tmp_path, budget=BUDGET):
    labels, paper = ["0", "1", "2"], [70.0, 72.0, 71.0]
    results = [{"name": f"step{l}", "label": l, "paper_top1": p, "top1": t, "minutes": 1.0}
               for l, p, t in zip(labels, paper, top1s)]
    results.append({"name": "side", "label": "abl", "paper_top1": 70.5, "top1": 50.0, "minutes": 1.0})
    path = tmp_path / f"seed{seed}.json"
    path.write_text(json.dumps({"config": {**budget, "seed": seed}, "results": results}))
    return path


def test_means_spreads_and_paired_changes(tmp_path):
    paths = [run(0, [20.0, 30.0, 26.0], tmp_path), run(1, [24.0, 30.0, 28.0], tmp_path)]
    summary = roadmap_seeds.combine(roadmap_seeds.load_runs(paths))
    rows = {r["name"]: r for r in summary["rows"]}
    assert rows["step0"]["top1_mean"] == 22.0 and rows["step0"]["top1_sd"] == pytest.approx(2.83, abs=0.01)
    assert "change_mean" not in rows["step0"]
    assert rows["step1"]["change_mean"] == 8.0 and rows["step1"]["change_same_sign"] == 2  # +10 and +6
    assert rows["step2"]["change_mean"] == -3.0 and rows["step2"]["change_sd"] == pytest.approx(1.41, abs=0.01)
    assert "change_mean" not in rows["side"]  # a side ablation is not a step of the sequence
    assert summary["agreement_of_means"]["spearman"] == 1.0  # means 22, 30, 27 rank like 70, 72, 71
    assert summary["seeds"] == [0, 1]
    assert "2/2 same sign" in roadmap_seeds.to_markdown(summary)


def test_refuses_runs_of_different_budgets_or_a_repeated_seed(tmp_path):
    a = run(0, [20.0, 30.0, 26.0], tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    b = run(1, [20.0, 30.0, 26.0], other, budget={**BUDGET, "epochs": 4})
    with pytest.raises(SystemExit, match="more than the seed"):
        roadmap_seeds.load_runs([a, b])
    with pytest.raises(SystemExit, match="same seed"):
        roadmap_seeds.load_runs([a, a])


def test_repvit_roadmap_reads_the_combined_means(tmp_path):
    from repvit.roadmap.report import load_accuracy
    paths = [run(0, [20.0, 30.0, 26.0], tmp_path), run(1, [24.0, 30.0, 28.0], tmp_path)]
    combined = tmp_path / "seeds.json"
    assert roadmap_seeds.main([str(p) for p in paths] + ["--json", str(combined)]) == 0
    assert load_accuracy(combined) == {"step0": 22.0, "step1": 30.0, "step2": 27.0, "side": 50.0}
