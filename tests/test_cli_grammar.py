"""Every parser of ``repvit`` against the command grammar (``repvit/commands/_grammar.py``, written
out in docs/cli.md): each shared option has its one spelling, metavar, type, nargs and default
wherever it appears; deprecated spellings exist only as hidden aliases, still work and say so;
a missing optional package is one line naming its extra; ``repvit demo`` times warm models."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

from repvit.cli import build_parser, main, missing_extra
from repvit.commands import _grammar as grammar

REPO = Path(__file__).resolve().parents[1]
OLD_SPELLINGS = {"--output-dir", "--coco", "-w"}     # never offered except as a Deprecated alias


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


def problems(command: str, parser: argparse.ArgumentParser, defaults: dict | None = None) -> list[str]:
    """What in ``parser`` disagrees with the grammar (empty when it follows it)."""
    found = []
    for action in parser._actions:
        if not action.option_strings or isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        where = f"{command} {'/'.join(action.option_strings)}"
        if isinstance(action, grammar.Deprecated):
            if action.help is not argparse.SUPPRESS:
                found.append(f"{where}: a deprecated alias must be hidden from --help")
            continue
        old = set(action.option_strings) & OLD_SPELLINGS
        if old:
            found.append(f"{where}: offers the deprecated spelling {sorted(old)} as an option of its own")
        shared = [grammar.BY_FLAG[s] for s in action.option_strings if s in grammar.BY_FLAG]
        if not shared:
            continue
        opt = shared[0]
        if set(action.option_strings) != set(opt.flags):
            found.append(f"{where}: spelled {sorted(action.option_strings)}, the grammar says {sorted(opt.flags)}")
        if opt.metavar is None:   # an on/off flag
            if not (action.nargs == 0 or isinstance(action, grammar.FlagOrDeprecatedFile)):
                found.append(f"{where}: the grammar makes it an on/off flag, here it takes a value")
            continue
        if action.nargs == 0:
            found.append(f"{where}: takes {opt.metavar} in the grammar, here it is an on/off flag")
            continue
        metavar = action.metavar or action.dest.upper()
        if metavar != opt.metavar:
            found.append(f"{where}: metavar {metavar!r}, the grammar says {opt.metavar!r}")
        if action.type is not opt.type and not (opt.type is None and action.type is str):
            found.append(f"{where}: type {action.type}, the grammar says {opt.type}")
        bare_pretrained = (opt.flags == ("--pretrained",) and action.nargs == "?" and command.startswith("repvit sam "))
        if action.nargs != opt.nargs and not bare_pretrained:
            found.append(f"{where}: nargs {action.nargs!r}, the grammar says {opt.nargs!r}")
        if opt.default != grammar.PER_COMMAND:
            default = action.default
            if default is argparse.SUPPRESS and defaults is not None:
                default = defaults.get(command, {}).get(opt.flags[0], argparse.SUPPRESS)
            if default != opt.default:
                found.append(f"{where}: default {default!r}, the grammar says {opt.default!r}")
    return found


def test_every_command_and_action_follows_the_grammar():
    parsers = dict(walk(build_parser()))
    for command in ("repvit train", "repvit eval", "repvit predict", "repvit export", "repvit bench", "repvit info",
                    "repvit demo", "repvit weights", "repvit roadmap", "repvit detect train", "repvit detect eval",
                    "repvit detect predict", "repvit detect export", "repvit segment train", "repvit segment eval",
                    "repvit segment predict", "repvit segment export", "repvit sam predict",
                    "repvit sam everything", "repvit sam eval", "repvit sam export", "repvit sam distill",
                    "repvit sam demo"):
        assert command in parsers, f"{command} is in docs/cli.md but not in the CLI"
    defaults = table_defaults()
    found = [p for command, parser in parsers.items() for p in problems(command, parser, defaults)]
    assert found == []


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


def test_the_checker_catches_a_drifted_command():
    drifted = argparse.ArgumentParser()
    drifted.add_argument("--device", default="cpu")                    # another default
    drifted.add_argument("--output-dir")                                # an old spelling offered as new
    drifted.add_argument("--pretrained", action="store_true")          # a flag where the grammar takes a name
    drifted.add_argument("--report", metavar="FILE.json")              # another metavar
    drifted.add_argument("--batch-size", type=int, metavar="N")        # no -b
    found = problems("repvit drifted", drifted)
    assert len(found) == 5, found
    for text in ("default 'cpu'", "--output-dir", "on/off flag", "metavar 'FILE.json'", "spelled"):
        assert any(text in p for p in found), (text, found)


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
    (["sam", "eval", "--point", "farthest", "--random-weights"], "point", "farthest",
     "--point is deprecated: use --point-at"),
])
def test_deprecated_spellings_still_work_and_say_so_once(argv, dest, value, message, capsys):
    flag = next(a for a in argv if a in ("--output-dir", "--coco", "-w", "--json", "--point", "--pretrained",
                                         "--skip-bad-images"))
    again = argv + argv[argv.index(flag):argv.index(flag) + 2] if flag != "--pretrained" else argv + [flag]
    args = parse(again)
    assert getattr(args, dest) == value
    err = capsys.readouterr().err
    assert err.count(message) == 1, err


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
