"""``repvit track FOLDER_OF_VIDEOS``: every video of a folder tracked into its own folder with its own prompts
(a JSON file or an index mask per video), each equal to a single run on that video; complete videos are skipped
on a rerun, a broken video is recorded while the others go on, nothing half-done sits under a final name, and
two torchrun ranks share the videos. The tracker is test_track.py's stand-in, whose masks are known."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from repvit.cli import main
from repvit.data.davis import write_annotation
from repvit.data.stream import list_videos
from repvit.data.video import write_video

from .test_track import StandInStream, bedroom, read_masks, stand_in  # noqa: F401 - bedroom is a fixture

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def videos(bedroom, tmp_path):  # noqa: F811
    """A folder of three videos (two frame folders, one .mp4; 6, 4 and 6 frames), a prompts folder for two of
    them and an index mask (objects 1 and 2) for the third."""
    root, prompts, masks = tmp_path / "videos", tmp_path / "prompts", tmp_path / "masks"
    for folder in (root, prompts, masks):
        folder.mkdir()
    shutil.copytree(bedroom, root / "kitchen")
    (root / "hall").mkdir()
    for i in range(4):
        shutil.copy(bedroom / f"{i + 2:05d}.jpg", root / "hall" / f"frame_{i}.jpg")
    write_video((np.asarray(Image.open(p)) for p in sorted(bedroom.iterdir())), root / "porch.mp4", fps=10)
    (root / "notes.txt").write_text("not a video")
    (prompts / "kitchen.json").write_text(json.dumps([{"object": 3, "points": [[60, 40]]},
                                                      {"object": 4, "frame": 2, "box": [100, 50, 140, 90]}]))
    (prompts / "hall.json").write_text(json.dumps([{"points": [[120, 70, 1]]}]))
    index = np.zeros((136, 240), np.uint8)
    index[20:50, 30:70], index[80:120, 150:200] = 1, 2
    write_annotation(masks / "porch.png", index)
    return root, prompts, masks, index


def single_run(video: Path, out: Path, monkeypatch, *prompt_args) -> dict:
    stand_in(monkeypatch, StandInStream())
    assert main(["track", str(video), *prompt_args, "--output", str(out), "--quiet"]) == 0
    return {p.name: read_masks(p) for p in sorted((out / "masks").iterdir())}


def test_list_videos_names_video_files_and_frame_folders_and_refuses_two_of_one_name(videos, bedroom, tmp_path):  # noqa: F811,E501
    root = videos[0]
    assert [(name, path.name) for name, path in list_videos(root)] == [
        ("hall", "hall"), ("kitchen", "kitchen"), ("porch", "porch.mp4")]
    assert list_videos(bedroom) == [] and list_videos(root / "porch.mp4") == []     # one video, not a folder of them
    write_video([np.zeros((16, 16, 3), np.uint8)], root / "hall.mp4")
    with pytest.raises(ValueError, match="two videos are named 'hall'"):
        list_videos(root)


def test_every_video_is_tracked_into_its_own_folder_as_a_single_run_tracks_it(videos, tmp_path, monkeypatch, capsys):
    root, prompts, masks, index = videos
    stream = stand_in(monkeypatch, StandInStream())
    out = tmp_path / "out"
    assert main(["track", str(root), "--prompts", str(prompts), "--mask", str(masks), "--output", str(out),
                 "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "3 of 3 videos complete (0 already were), 0 failed" in captured.out
    assert sorted(line.split(":")[0] for line in captured.err.splitlines() if line.startswith("[rank")) == [
        "[rank 0] hall", "[rank 0] kitchen", "[rank 0] porch"]
    assert sorted(p.name for p in out.iterdir()) == ["hall", "kitchen", "porch", "videos.json"]   # no partial left
    summary = json.loads((out / "videos.json").read_text())
    assert summary["complete"] == ["hall", "kitchen", "porch"] and summary["failed"] == []
    assert {name: row["frames_done"] for name, row in summary["per_video"].items()} == {
        "hall": 4, "kitchen": 6, "porch": 6}
    record = json.loads((out / "porch" / "track.json").read_text())
    assert record["objects"] == [1, 2] and record["masks"] == str(out / "porch" / "masks")
    assert Path(record["overlay"]).parent == out / "porch" and Path(record["overlay"]).is_file()
    assert len(stream.steps) == 16                       # one tracker, reset between videos

    for obj in (1, 2):
        Image.fromarray((index == obj).astype(np.uint8) * 255).save(tmp_path / f"obj{obj}.png")
    expected = {
        "kitchen": single_run(root / "kitchen", tmp_path / "s1", monkeypatch, "--prompts", str(prompts / "kitchen.json")),
        "hall": single_run(root / "hall", tmp_path / "s2", monkeypatch, "--prompts", str(prompts / "hall.json")),
        "porch": single_run(root / "porch.mp4", tmp_path / "s3", monkeypatch, "--mask", str(tmp_path / "obj1.png"),
                            "--mask", str(tmp_path / "obj2.png"))}
    for name, objects in expected.items():
        got = {p.name: read_masks(p) for p in sorted((out / name / "masks").iterdir())}
        assert sorted(got) == sorted(objects) and objects, name
        for obj, frames in objects.items():
            assert sorted(got[obj]) == sorted(frames) and all((got[obj][t] == m).all() for t, m in frames.items())
        assert any(m.any() for frames in objects.values() for m in frames.values())      # masks, not empty ones

    before = (out / "kitchen" / "track.json").stat().st_mtime_ns
    stream = stand_in(monkeypatch, StandInStream())
    assert main(["track", str(root), "--prompts", str(prompts), "--mask", str(masks), "--output", str(out),
                 "--quiet"]) == 0                            # a rerun resumes: nothing is left to do
    assert stream.steps == [] and (out / "kitchen" / "track.json").stat().st_mtime_ns == before
    assert json.loads((out / "videos.json").read_text())["skipped_complete"] == ["hall", "kitchen", "porch"]
    assert capsys.readouterr().err.count("skipped (--overwrite redoes it)") == 3
    assert main(["track", str(root), "--prompts", str(prompts), "--mask", str(masks), "--output", str(out),
                 "--quiet", "--overwrite"]) == 0
    assert len(stream.steps) == 16


def test_a_broken_video_is_recorded_the_others_go_on_and_a_rerun_retries_it(videos, tmp_path, monkeypatch, capsys):
    root, prompts, masks, _ = videos
    (root / "attic.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(200))      # not a decodable video
    (prompts / "attic.json").write_text(json.dumps([{"points": [[10, 10]]}]))
    stand_in(monkeypatch, StandInStream())
    out = tmp_path / "out"
    assert main(["track", str(root), "--prompts", str(prompts), "--mask", str(masks), "--output", str(out),
                 "--quiet"]) == 1
    summary = json.loads((out / "videos.json").read_text())
    assert summary["failed"] == ["attic"] and summary["complete"] == ["hall", "kitchen", "porch"]
    assert summary["per_video"]["attic"]["stop_reason"].startswith("error:")
    assert not (out / "attic").exists()                  # never a half result under a final name
    assert "[rank 0] attic: 0 object(s) through 0 frames (error:" in capsys.readouterr().err
    write_video((np.asarray(Image.open(p)) for p in sorted((root / "kitchen").iterdir())), root / "attic.mp4")
    stream = stand_in(monkeypatch, StandInStream())
    assert main(["track", str(root), "--prompts", str(prompts), "--mask", str(masks), "--output", str(out),
                 "--quiet"]) == 0
    assert len(stream.steps) == 6 and sorted(p.name for p in out.iterdir()) == [
        "attic", "hall", "kitchen", "porch", "videos.json"]


def test_prompts_for_a_folder_of_videos_are_checked_before_anything_runs(videos, tmp_path, monkeypatch, capsys):
    root, prompts, masks, _ = videos
    stand_in(monkeypatch, StandInStream())
    out = tmp_path / "out"
    cases = [(["--prompts", str(prompts)], "no prompts for 1 of 3 videos (porch)"),
             (["--point", "10,10"], "would prompt every video at the same place"),
             (["--prompts", str(prompts / "hall.json")], "name folders holding <video>.json"),
             ([], "give each its prompts with --prompts DIR")]
    for extra, message in cases:
        assert main(["track", str(root), *extra, "--output", str(out), "--quiet"]) == 2, extra
        assert message in capsys.readouterr().err, extra
    assert not out.exists()


def test_two_torchrun_ranks_share_the_videos_and_a_rerun_resumes(videos, tmp_path, monkeypatch):
    root, prompts, masks, _ = videos
    script = tmp_path / "stand_in_track.py"
    script.write_text(f"import sys; sys.path.insert(0, {str(REPO)!r})\n"
                      "from tests.test_track import StandInStream\n"
                      "import repvit.commands._tracking as command\n"
                      "command.make_tracker = lambda args, threads: (StandInStream(), {'runtime': 'stand-in'})\n"
                      "from repvit.cli import main\n"
                      "sys.exit(main(sys.argv[1:]))\n")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
           "track", str(root), "--prompts", str(prompts), "--mask", str(masks), "--output", str(out), "--quiet",
           "--threads", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    lines = sorted(line.split(":")[0] for line in first.stderr.splitlines() if line.startswith("[rank"))
    assert lines == ["[rank 0] hall", "[rank 0] porch", "[rank 1] kitchen"]          # dealt in turn, one line each
    assert first.stdout.count("3 of 3 videos complete") == 1                          # rank 0 alone reports
    summary = json.loads((out / "videos.json").read_text())
    assert summary["world_size"] == 2 and {n: r["rank"] for n, r in summary["per_video"].items()} == {
        "hall": 0, "kitchen": 1, "porch": 0}
    expected = single_run(root / "kitchen", tmp_path / "single", monkeypatch, "--prompts", str(prompts / "kitchen.json"))
    got = {p.name: read_masks(p) for p in sorted((out / "kitchen" / "masks").iterdir())}
    assert sorted(got) == sorted(expected) == ["obj3", "obj4"]
    assert all((got[o][t] == m).all() for o, frames in expected.items() for t, m in frames.items())
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("skipped (--overwrite redoes it)") == 3
    assert json.loads((out / "videos.json").read_text())["skipped_complete"] == ["hall", "kitchen", "porch"]
