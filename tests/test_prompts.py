"""The prompt layer shared by RepViT-SAM and EdgeTAM: parsing, checking and prompt files."""
import json

import pytest

from repvit.commands.track import read_track_prompts
from repvit.data.prompts import Prompt, parse_points, read_prompt_entries, read_prompt_file


def test_prompt_file_round_trip_keeps_points_boxes_and_none(tmp_path):
    prompts = [Prompt([(1.5, 2.0, 1), (3.0, 4.0, 0)], None), Prompt([], (1.0, 2.0, 30.0, 40.0))]
    path = tmp_path / "p.json"
    path.write_text(json.dumps([p.as_dict() for p in prompts]))
    back = read_prompt_file(path)
    assert back == prompts and isinstance(back[1].box, tuple) and back[0].box is None


def test_track_prompt_file_reads_object_and_frame_and_defaults(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps([{"object": 3, "frame": 5, "points": [[10, 20]]}, {"box": [1, 2, 3, 4]}]))
    first, second = read_track_prompts(path)
    assert (first.object_id, first.frame, first.points, first.box) == (3, 5, [(10.0, 20.0, 1)], None)
    # no frame: the first frame the stream tracks (repvit track --frame's default)
    assert (second.object_id, second.frame, second.points, second.box) == (1, None, [], (1.0, 2.0, 3.0, 4.0))


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    ('{"points": []}', "JSON list"),
    ('[{"points": [[1, 2]], "frame": 2}]', "'points' and/or 'box'"),   # 'frame' is EdgeTAM's key, not SAM's
    ('[{"box": [1, 2, 3]}]', "prompt 0 of .*4 numbers|prompt 0 of .*got 3"),
    ('[{"points": [["a", 2]]}]', "prompt 0 of"),
])
def test_bad_sam_prompt_files_name_file_and_entry(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        read_prompt_file(path)


def test_bad_track_prompt_entries_and_missing_file(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([{"points": [[1, 2]]}, {"object": "two", "points": [[1, 2]]}]))
    with pytest.raises(ValueError, match="prompt 1 of .*whole numbers"):
        read_track_prompts(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_track_prompts(tmp_path / "missing.json")
    assert read_prompt_entries(tmp_path / "bad.json", extra_keys=("object",))[1]["object"] == "two"


def test_check_names_where_and_the_picture():
    with pytest.raises(ValueError, match=r"^object 2 on frame 5: point \(300.0, 1.0\) lies outside the 200x100 frames"):
        Prompt([(300.0, 1.0, 1)]).check(200, 100, where="object 2 on frame 5", picture="frames")
    with pytest.raises(ValueError, match="label 2"):
        Prompt([(1.0, 1.0, 2)]).check(200, 100)
    with pytest.raises(ValueError, match="X1 > X0"):
        Prompt([], (5.0, 5.0, 1.0, 9.0)).check(200, 100)
    Prompt([(0.0, 100.0, 0)], (0.0, 0.0, 200.0, 100.0)).check(200, 100)  # the border is inside
    assert parse_points("1,2; 3,4,0") == [(1.0, 2.0, 1), (3.0, 4.0, 0)]
