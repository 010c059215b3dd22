"""Every parser of ``repvit`` against the option grammar (``repvit/engine/grammar.py``, written out in
docs/cli.md): no spelling means two things anywhere (two registry rows, two commands' own options, or
a command's own option under a registry spelling); every shared option comes from the registry, with
its one spelling, metavar, type, nargs and default; deprecated spellings exist only as hidden aliases,
still work and say so once; a missing optional package is one line naming its extra; ``repvit demo``
times warm models."""
from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from repvit.cli import build_parser, main, missing_extra
from repvit.commands import _grammar as grammar
from repvit.engine import grammar as registry

REPO = Path(__file__).resolve().parents[1]
OLD_SPELLINGS = {"--output-dir", "--coco", "-w", "--sched", "--formats", "--limit", "--video-max-frames", "--runs",
                 "--iters"}     # never offered except as a Deprecated alias


def walk(parser: argparse.ArgumentParser, path=("repvit",)):
    """Every command and action as users spell it (a routed action such as ``track-eval`` as ``track eval``)."""
    from repvit.cli import ACTIONS
    routed = {name: words for words, name in ACTIONS.items()}
    yield " ".join(path), parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from walk(sub, path + tuple(routed.get(name, (name,))))


def table_defaults() -> dict:
    """The defaults of the training commands, whose parsers suppress them (they come from option tables)."""
    from repvit.classification.config import OPTIONS as TRAIN
    from repvit.dense.options import TABLES
    from repvit.sam.distill import OPTIONS as DISTILL
    out = {}
    for command, table in (("repvit train", TRAIN), ("repvit detect train", TABLES["detect"]),
                           ("repvit segment train", TABLES["segment"]), ("repvit sam distill", DISTILL)):
        out[command] = {flags[0]: kw.get("default") for flags, kw in table}
    return out


def live_options(parser: argparse.ArgumentParser):
    """The options of ``parser`` a user sees (not --help, sub-commands or hidden deprecated aliases)."""
    for action in parser._actions:
        if action.option_strings and not isinstance(action, (argparse._HelpAction, argparse._SubParsersAction,
                                                               registry.Deprecated, registry.Retired)):
            yield action


def meanings(parsers: dict) -> list[str]:
    """Spellings that mean two things: each live option means its registry row when it was taken from
    the registry (``grammar.add`` / ``grammar.row`` mark it), else the command's own option. A spelling
    of two rows, of a row and a command's own option, or of two commands' own options is a problem;
    so is a registry spelling re-declared by hand (it is then the command's own)."""
    found = []
    rows = defaultdict(list)
    for opt in registry.SHARED:
        for spelling in registry.spellings(opt):
            rows[spelling].append(opt)
    found += [f"{spelling}: {len(opts)} registry rows" for spelling, opts in rows.items() if len(opts) > 1]
    used = defaultdict(lambda: defaultdict(list))     # spelling -> meaning -> commands
    for command, parser in parsers.items():
        for action in live_options(parser):
            opt = getattr(action, "grammar", None)
            meaning = ("row", opt.flags[0]) if opt is not None else ("own", command)
            for spelling in action.option_strings:
                used[spelling][meaning].append(command)
    for spelling, by_meaning in sorted(used.items()):
        own = sorted(cmds[0] for (kind, _), cmds in by_meaning.items() if kind == "own")
        if spelling in rows and own:
            found.append(f"{spelling}: declared by hand in {', '.join(own)}; the registry has it (grammar.add, "
                         "grammar.row)")
        elif len(by_meaning) > 1:
            found.append(f"{spelling} means {len(by_meaning)} things: "
                         + "; ".join(f"{what} in {', '.join(sorted(set(cmds)))}" for (_, what), cmds
                                     in sorted(by_meaning.items())))
    return found


def problems(command: str, parser: argparse.ArgumentParser, defaults: dict | None = None) -> list[str]:
    """What in ``parser`` disagrees with the grammar's rows (empty when it follows them)."""
    found = []
    for action in parser._actions:
        if not action.option_strings or isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        where = f"{command} {'/'.join(action.option_strings)}"
        if isinstance(action, (registry.Deprecated, registry.Retired)):
            if action.help is not argparse.SUPPRESS:
                found.append(f"{where}: a deprecated alias must be hidden from --help")
            continue
        old = set(action.option_strings) & OLD_SPELLINGS
        if old:
            found.append(f"{where}: offers the deprecated spelling {sorted(old)} as an option of its own")
        shared = [registry.BY_FLAG[s] for s in action.option_strings if s in registry.BY_FLAG]
        if not shared:
            continue
        opt = shared[0]
        if set(action.option_strings) != set(registry.spellings(opt)):
            found.append(f"{where}: spelled {sorted(action.option_strings)}, the grammar says "
                         f"{sorted(registry.spellings(opt))}")
        if opt.metavar == registry.ONOFF:
            if not isinstance(action, argparse.BooleanOptionalAction):
                found.append(f"{where}: the grammar makes it --X/--no-X, here it is not")
        elif opt.metavar is None:   # an on/off flag
            if not (action.nargs == 0 or isinstance(action, registry.FlagOrDeprecatedFile)):
                found.append(f"{where}: the grammar makes it an on/off flag, here it takes a value")
            continue
        elif action.nargs == 0:
            found.append(f"{where}: takes {opt.metavar} in the grammar, here it is an on/off flag")
            continue
        else:
            metavar = action.metavar or action.dest.upper()
            if metavar != opt.metavar:
                found.append(f"{where}: metavar {metavar!r}, the grammar says {opt.metavar!r}")
            if action.type is not opt.type and not (opt.type is None and action.type is str):
                found.append(f"{where}: type {action.type}, the grammar says {opt.type}")
            bare_pretrained = (opt.flags == ("--pretrained",) and action.nargs == "?" and command.startswith("repvit sam "))
            if action.nargs != opt.nargs and not bare_pretrained:
                found.append(f"{where}: nargs {action.nargs!r}, the grammar says {opt.nargs!r}")
            if opt.choices is not None and tuple(action.choices or ()) != tuple(opt.choices):
                found.append(f"{where}: choices {action.choices}, the grammar says {opt.choices}")
        if opt.default != registry.PER_COMMAND:
            default = action.default
            if default is argparse.SUPPRESS and defaults is not None:
                default = defaults.get(command, {}).get(opt.flags[0], argparse.SUPPRESS)
            if default != opt.default:
                found.append(f"{where}: default {default!r}, the grammar says {opt.default!r}")
    return found


COMMANDS = ("repvit train", "repvit eval", "repvit predict", "repvit export", "repvit bench", "repvit info",
            "repvit demo", "repvit weights", "repvit roadmap", "repvit detect train", "repvit detect eval",
            "repvit detect predict", "repvit detect export", "repvit segment train", "repvit segment eval",
            "repvit segment predict", "repvit segment export", "repvit sam predict", "repvit sam everything",
            "repvit sam eval", "repvit sam export", "repvit sam distill", "repvit sam demo", "repvit track",
            "repvit track eval")


def test_every_command_and_action_follows_the_grammar():
    parsers = dict(walk(build_parser()))
    for command in COMMANDS:
        assert command in parsers, f"{command} is in docs/cli.md but not in the CLI"
    defaults = table_defaults()
    found = [p for command, parser in parsers.items() for p in problems(command, parser, defaults)]
    assert found == []


def test_no_spelling_means_two_things():
    assert meanings(dict(walk(build_parser()))) == []


def test_every_option_two_commands_offer_is_a_registry_row():
    """The issue's list, checked: --sched/--schedule, --clip-grad, --sync-bn, --scale, --model, --format(s),
    the caps and the timing options each have one row, offered by every command that has the knob."""
    users = defaultdict(set)
    for command, parser in walk(build_parser()):
        for action in live_options(parser):
            for spelling in action.option_strings:
                users[spelling].add(command)
    shared = sorted(s for s, commands in users.items() if len(commands) > 1)
    assert [s for s in shared if s not in registry.BY_FLAG] == []
    rows = {s: registry.BY_FLAG[s].flags[0] for s in ("--schedule", "--clip-grad", "--clip-mode", "--sync-bn",
                                                       "--format", "--max-images", "--max-frames", "--repeats",
                                                       "--warmup", "--opset", "--coreml-precision", "--prompts",
                                                       "--random-weights", "--point", "--box")}
    assert all(users[s] for s in rows), {s: users[s] for s in rows}
    for gone in ("--sched", "--formats", "--limit", "--video-max-frames", "--runs", "--iters"):
        assert users[gone] == set(), (gone, users[gone])
    assert users["--scale"] == {"repvit train"}          # the crop area; segment's resize range is --ratio-range
    assert "repvit export" not in users["--batch-size"]  # the ExecuTorch program's batch is --fixed-batch
    assert "repvit sam predict" not in users["--model"]  # the model family is --family there
    for row in registry.SHARED:
        if row.default == registry.PER_COMMAND and row.metavar == registry.ONOFF:
            assert row.why, f"{row.flags[0]}: on in one command, off in another needs a reason in its row"


def test_the_checker_catches_a_spelling_with_two_meanings(monkeypatch):
    parsers = dict(walk(build_parser()))
    planted = argparse.ArgumentParser()
    planted.add_argument("--scale", type=float, nargs=2, help="another range")    # train's --scale is the crop area
    planted.add_argument("--seed", type=int, default=0, metavar="N")             # a shared option by hand
    found = meanings({**parsers, "repvit planted": planted})
    assert len(found) == 2, found
    assert found[0].startswith("--scale means 2 things: ") and "repvit planted" in found[0], found
    assert found[1].startswith("--seed: declared by hand in repvit planted"), found
    # a table row written by hand instead of taken from the registry
    from repvit.engine import option_table
    by_hand = [(("--clip-grad",), dict(type=float, default=0.0, metavar="MAX", help="clip the gradient norm"))
               if flags[0] == "--clip-grad" else (flags, kwargs) for flags, kwargs in option_table.LOOP]
    table = argparse.ArgumentParser()
    option_table.add_options(table, options=by_hand)
    assert meanings({**parsers, "repvit planted": table}) == [
        "--clip-grad: declared by hand in repvit planted; the registry has it (grammar.add, grammar.row)"]
    # two registry rows with one spelling
    monkeypatch.setattr(registry, "SHARED", registry.SHARED + (registry.Shared(("--scale",), "F", "another"),
                                                                 registry.Shared(("--scale",), "F", "a third")))
    assert meanings({}) == ["--scale: 2 registry rows"]


def test_the_checker_catches_a_drifted_command():
    drifted = argparse.ArgumentParser()
    drifted.add_argument("--device", default="cpu")                    # another default
    drifted.add_argument("--output-dir")                                # an old spelling offered as new
    drifted.add_argument("--pretrained", action="store_true")          # a flag where the grammar takes a name
    drifted.add_argument("--report", metavar="FILE.json")              # another metavar
    drifted.add_argument("--batch-size", type=int, metavar="N")        # no -b
    drifted.add_argument("--sync-bn", action="store_true")             # not --sync-bn/--no-sync-bn
    found = problems("repvit drifted", drifted)
    assert len(found) == 7, found
    for text in ("default 'cpu'", "--output-dir", "on/off flag", "metavar 'FILE.json'", "spelled ['--batch-size']",
                 "spelled ['--sync-bn']", "--X/--no-X"):
        assert any(text in p for p in found), (text, found)


def test_device_defaults_to_auto_in_every_command():
    defaults = table_defaults()
    seen = {}
    for command, parser in walk(build_parser()):
        for action in parser._actions:
            if "--device" in action.option_strings:
                default = action.default
                if default is argparse.SUPPRESS:
                    default = defaults[command]["--device"]
                seen[command] = default
    assert len(seen) >= 16 and set(seen.values()) == {"auto"}, seen


def parse(argv):
    return build_parser().parse_args(argv)


@pytest.mark.parametrize("argv, dest, value, message", [
    (["sam", "export", "--random-weights", "--output-dir", "out"], "output", "out", "--output-dir is deprecated: use --output"),
    (["sam", "eval", "--coco", "d", "--random-weights"], "data", "d", "--coco is deprecated: use --data"),
    (["sam", "predict", "im.png", "-w", "s.pt"], "checkpoint", "s.pt", "-w is deprecated: use --checkpoint"),
    (["sam", "predict", "im.png", "--pretrained"], "pretrained", "repvit_sam",
     "--pretrained without a name is deprecated: use --pretrained repvit_sam"),
    (["detect", "eval", "--checkpoint", "c", "--json", "r.json"], "report", "r.json", "--json is deprecated: use --report"),
    (["eval", "--checkpoint", "c", "--data", "d", "--json", "r.json"], "report", "r.json",
     "--json is deprecated: use --report"),
    (["bench", "--json", "r.json"], "report", "r.json", "--json FILE is deprecated: use --report FILE"),
    (["bench", "--json", "-"], "json", True, "--json - is deprecated: use --json"),
    (["train", "--data", "d", "--skip-bad-images"], "skip_bad", True, "--skip-bad-images is deprecated: use --skip-bad"),
    (["eval", "--data", "d", "--checkpoint", "c", "--skip-bad-images"], "skip_bad", True,
     "--skip-bad-images is deprecated: use --skip-bad"),
])
def test_deprecated_spellings_still_work_and_say_so_once(argv, dest, value, message, capsys):
    flag = next(a for a in argv if a in ("--output-dir", "--coco", "-w", "--json", "--pretrained",
                                         "--skip-bad-images"))
    again = argv + argv[argv.index(flag):argv.index(flag) + 2] if flag != "--pretrained" else argv + [flag]
    args = parse(again)
    assert getattr(args, dest) == value
    err = capsys.readouterr().err
    assert err.count(message) == 1, err


@pytest.mark.parametrize("argv, message", [
    (["sam", "eval", "--point", "farthest", "--random-weights"], "--point farthest is no longer read by repvit sam "
     "eval: write --point-at center|farthest (--point is a point prompt X,Y[,LABEL] in every command)"),
    (["sam", "export", "--random-weights", "--max-images", "3"], "--max-images 3 is no longer read by repvit sam "
     "export: write --num-real N (--max-images is how many images of the input are used in every command)"),
])
def test_spellings_that_meant_something_else_here_are_refused_naming_the_new_one(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        parse(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("argv, dest, value, message", [
    (["train", "--data", "d", "--sched", "step", "--sched", "none"], "schedule", "none",
     "--sched is deprecated: use --schedule"),
    (["segment", "train", "--scale", "1", "1", "--scale", "0.5", "1.5"], "ratio_range", [0.5, 1.5],
     "--scale is deprecated: use --ratio-range"),
    (["sam", "predict", "im.png", "--model", "edgetam", "--model", "edgetam"], "family", "edgetam",
     "--model is deprecated: use --family"),
    (["sam", "export", "--random-weights", "--formats", "onnx", "--formats", "onnx,openvino"], "format",
     "onnx,openvino", "--formats is deprecated: use --format"),
    (["export", "--model", "repvit_m0_6", "--batch-size", "3", "--batch-size", "2"], "fixed_batch", 2,
     "--batch-size is deprecated: use --fixed-batch"),
    (["sam", "eval", "--random-weights", "--limit", "4", "--limit", "3"], "max_images", 3,
     "--limit is deprecated: use --max-images"),
    (["sam", "demo", "--random-weights", "--video-max-frames", "9", "--video-max-frames", "5"], "max_frames", 5,
     "--video-max-frames is deprecated: use --max-frames"),
    (["roadmap", "--runs", "2", "--runs", "3"], "repeats", 3, "--runs is deprecated: use --repeats"),
    (["bench", "--iters", "2", "--iters", "4"], "repeats", 4, "--iters is deprecated: use --repeats"),
])
def test_the_issue_27_old_spellings_still_work_and_say_so_once(argv, dest, value, message, capsys):
    args = parse(argv)
    assert getattr(args, dest) == value
    err = capsys.readouterr().err
    assert err.count(message) == 1 and err.count("\n") == 1, err


def test_the_new_spellings_parse_without_a_message(capsys):
    assert parse(["train", "--data", "d", "--schedule", "none"]).schedule == "none"
    assert parse(["segment", "train", "--ratio-range", "1", "2"]).ratio_range == [1.0, 2.0]
    args = parse(["sam", "predict", "im.png", "--family", "edgetam"])
    assert (args.family, args.checkpoint) == ("edgetam", None)
    assert parse(["sam", "predict", "im.png"]).family == "repvit_sam"
    assert parse(["export", "--model", "repvit_m0_6"]).format == "onnx"      # no longer required
    assert parse(["export", "--model", "repvit_m0_6", "--fixed-batch", "2"]).fixed_batch == 2
    assert parse(["sam", "demo", "--random-weights"]).max_frames == 60
    assert parse(["roadmap"]).repeats == 50 and parse(["demo"]).repeats == 5
    assert parse(["bench"]).repeats is None and parse(["bench", "--repeats", "7"]).repeats == 7   # None: per task
    assert capsys.readouterr().err == ""


def test_the_training_tables_share_one_meaning_of_clipping_and_sync_bn():
    from repvit.classification.config import resolve as resolve_train
    from repvit.dense.options import resolve as resolve_dense
    from repvit.sam.distill import resolve as resolve_distill
    train = resolve_train({"data": "d"})
    seg = resolve_dense({"data": "d", "class_names": "a,b"}, "segment")
    distill = resolve_distill({"data": "d", "teacher_random_seed": 0})
    assert [(c.clip_grad, c.clip_mode, c.sync_bn) for c in (train, seg, distill)] == [
        (0.02, "agc", False), (0.0, "norm", True), (0.0, "norm", True)]
    assert [c.schedule for c in (train, seg, distill)] == ["cosine", "step", "cosine"]


def test_an_image_prompt_file_is_the_track_schema(tmp_path):
    from repvit.commands.sam.predict import read_image_prompts
    from repvit.commands.track import read_track_prompts
    path = tmp_path / "p.json"
    path.write_text('[{"object": 2, "frame": 0, "points": [[3, 4, 0]]}, {"box": [1, 2, 5, 6]}]')
    image = read_image_prompts(path)
    assert [(p.points, p.box) for p in image] == [([(3.0, 4.0, 0)], None), ([], (1.0, 2.0, 5.0, 6.0))]
    track = read_track_prompts(path)
    assert [(p.object_id, p.frame, p.points, p.box) for p in track] == [
        (2, 0, [(3.0, 4.0, 0)], None), (1, None, [], (1.0, 2.0, 5.0, 6.0))]
    path.write_text('[{"frame": 3, "points": [[3, 4]]}]')
    with pytest.raises(ValueError, match="frame 3 on an image, which has only frame 0"):
        read_image_prompts(path)


def test_an_old_sched_key_in_a_config_file_still_loads(tmp_path, capsys):
    from repvit.classification.config import resolve
    old = tmp_path / "config.yaml"
    old.write_text("data: somewhere\nsched: step\n")
    cfg = resolve({"config": str(old)})
    assert cfg.schedule == "step" and not hasattr(cfg, "sched")
    assert "sched is deprecated, read as schedule" in capsys.readouterr().err


def test_a_renamed_option_in_an_old_config_file_still_loads(tmp_path, capsys):
    from repvit.classification.config import resolve
    old = tmp_path / "config.yaml"
    old.write_text("data: somewhere\nskip_bad_images: true\n")
    cfg = resolve({"config": str(old)})
    assert cfg.skip_bad is True and not hasattr(cfg, "skip_bad_images")
    assert "skip_bad_images is deprecated, read as skip_bad" in capsys.readouterr().err


def test_the_grammar_spellings_parse_without_a_message(capsys):
    args = parse(["sam", "export", "--random-weights", "-o", "out", "--report", "r.json"])
    assert (args.output, args.report, args.device) == ("out", "r.json", "auto")
    args = parse(["sam", "predict", "im.png", "--pretrained", "repvit_sam"])
    assert args.pretrained == "repvit_sam" and args.device == "auto"
    args = parse(["bench", "--json"])
    assert args.json is True and args.report is None and args.device == "auto"
    assert capsys.readouterr().err == ""


def test_sam_pretrained_names_the_sam_release():
    from repvit.commands.sam._common import check_pretrained
    assert check_pretrained("repvit_sam") and check_pretrained("repvit_sam:sam")
    assert not check_pretrained(None)
    with pytest.raises(ValueError, match="--pretrained repvit_sam"):
        check_pretrained("repvit_m2_3")


def test_sam_distill_pretrained_takes_a_release_name(capsys):
    from repvit.sam.distill import resolve
    common = {"data": "d", "teacher_random_seed": 0}
    assert resolve({**common, "pretrained": "repvit_m2_3"}).pretrained == "repvit_m2_3"
    assert capsys.readouterr().err == ""
    args = parse(["sam", "distill", "--data", "d", "--teacher-random-seed", "0", "--pretrained"])
    assert args.pretrained is True                       # the old bare flag ...
    cfg = resolve({k: v for k, v in vars(args).items() if k not in ("func", "command", "sam_action")})
    assert cfg.pretrained == "repvit_m2_3"               # ... means --model's weights, and says what to write
    assert "--pretrained without a name" in capsys.readouterr().err
    with pytest.raises(ValueError, match="does not fit the student --model repvit_m2_3"):
        resolve({**common, "pretrained": "repvit_m1_1"})


@pytest.mark.parametrize("module, command, extra", [
    ("segment_anything", "sam", "sam"), ("pycocotools", "sam", "sam"), ("pycocotools", "detect", "dense"),
    ("onnxruntime", "export", "onnx"), ("onnx", "export", "onnx"), ("coremltools", "export", "coreml"),
    ("executorch", "export", "executorch"), ("gradio", "sam", "sam-demo"), ("segment_anything.modeling", "sam", "sam"),
])
def test_missing_optional_packages_name_their_extra(module, command, extra):
    err = ModuleNotFoundError(f"No module named {module!r}", name=module)
    assert missing_extra(err, command).endswith(f"pip install 'repvit-pytorch[{extra}]'")
    assert missing_extra(ModuleNotFoundError("No module named 'nothing_we_know'", name="nothing_we_know"),
                         command) is None   # not an extra's: a bug, which keeps its traceback


def test_a_missing_package_is_one_line_and_status_2(tmp_path, monkeypatch, capsys):
    from PIL import Image
    image = tmp_path / "im.png"
    Image.new("RGB", (32, 24)).save(image)
    monkeypatch.setitem(sys.modules, "segment_anything", None)   # makes `import segment_anything` fail
    assert main(["sam", "predict", str(image), "--point", "3,4", "--random-weights"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("repvit sam predict: error:") and "pip install 'repvit-pytorch[sam]'" in err


def test_an_unrelated_import_error_keeps_its_traceback(monkeypatch):
    from repvit.commands import info

    def broken(args):
        import nothing_we_know  # noqa: F401
    monkeypatch.setattr(info, "run", broken)
    with pytest.raises(ModuleNotFoundError):
        main(["info"])


def test_demo_times_warm_models():
    """A first call that pays start-up must not reach the reported figure."""
    import torch
    from repvit.commands.demo import warm_timings
    now = [0.0]

    class SlowFirstCall(torch.nn.Module):
        def __init__(self, steady):
            super().__init__()
            self.calls, self.steady = 0, steady

        def forward(self, x):
            self.calls += 1
            now[0] += 100.0 if self.calls == 1 else self.steady
            return x

    unfused, fused = SlowFirstCall(2.0), SlowFirstCall(1.0)
    timings = warm_timings({"unfused": unfused, "fused": fused}, torch.zeros(1), warmup=1, repeats=3,
                           clock=lambda: now[0])
    assert (timings["unfused"][0], timings["fused"][0]) == (2.0, 1.0)
    assert (unfused.calls, fused.calls) == (4, 4)


def test_demo_states_threads_and_warm_up(capsys):
    assert main(["demo", "--model", "repvit_m0_6", "--img-size", "32", "--batch-size", "1", "--warmup", "1",
                 "--repeats", "1", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "on 1 CPU thread(s), median of 1 after 1 warm-up call(s)" in out and "OK" in out


def test_docs_cli_md_holds_the_grammar_table_and_every_command():
    text = (REPO / "docs" / "cli.md").read_text()
    rows = {line.split("`")[1]: line for line in text.splitlines() if line.startswith("| `repvit ")}
    for command, _ in walk(build_parser()):
        words = command.split()
        if len(words) == 2:
            assert f"repvit {words[1]}" in rows, f"docs/cli.md does not list {command}"
        elif len(words) == 3:
            assert f"`{words[2]}`" in rows[f"repvit {words[1]}"], f"docs/cli.md does not list {command}"
    assert grammar.markdown_table() in text, "docs/cli.md is out of date: paste `python -m repvit.commands._grammar`"
    assert grammar.deprecated_table() in text
