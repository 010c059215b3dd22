"""Official weights in one argument, against a local HTTP server that plays the release page.

The server on 127.0.0.1 serves an official-format file the test generates (``{'model': ...,
'args': Namespace}``, as the official training script writes them). Nothing here reaches
beyond the machine: every test points ``REPVIT_WEIGHTS_URL`` at the local server and
``TORCH_HOME`` at a temporary folder.
"""
from __future__ import annotations

import argparse
import http.server
import os
import socket
import threading
from pathlib import Path

import pytest
import torch

from repvit.models.checkpoint import CheckpointError
from repvit.models.factory import create_model
from repvit.models.pretrained import (MIRROR_ENV, WEIGHTS_DIR_ENV, HashMismatchError, WeightsUnavailableError,
                                      read_recorded_sha256, sha256_of)
from repvit.models.releases import RELEASES, find_release, parse_spec, releases_for
from repvit.models.variants import VARIANTS
from repvit.testing import randomize_batchnorm

REPO = Path(__file__).resolve().parents[1]
NAME = "repvit_m0_6"   # the smallest variant: a ~11 MB release file
FILE = "repvit_m0_6_distill_300e.pth"
PARACHUTE = 701        # ImageNet index of n03888257, one of Imagenette's ten classes


class ReleaseServer:
    """Serves ``files`` (name -> bytes); ``mode`` per name: "ok", "404" or "cut" (half the bytes, then close)."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.mode: dict[str, str] = {}
        self.requests: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - the http.server API
                name = self.path.rsplit("/", 1)[-1]
                server.requests.append(name)
                mode = server.mode.get(name, "ok")
                if name not in server.files or mode == "404":
                    self.send_error(404)
                    return
                body = server.files[name]
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if mode == "cut" else body)
                if mode == "cut":
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/releases"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def official_file(name: str = NAME, seed: int = 0) -> tuple[bytes, dict]:
    """Bytes of an official-format release file (distillation head, ``args`` Namespace) and its state dict."""
    torch.manual_seed(seed)
    model = randomize_batchnorm(create_model(name, distillation=True))
    with torch.no_grad():  # the generated weights see a parachute in everything
        for head in (model.classifier.classifier, model.classifier.classifier_dist):
            head.l.bias[PARACHUTE] += 50.0
    state = {k: v.clone() for k, v in model.state_dict().items()}
    import io
    buffer = io.BytesIO()
    torch.save({"model": state, "args": argparse.Namespace(model=name, epochs=300, lr=1e-3)}, buffer)
    return buffer.getvalue(), state


@pytest.fixture(scope="module")
def release_bytes():
    return official_file()


@pytest.fixture
def server(monkeypatch, tmp_path, release_bytes):
    srv = ReleaseServer()
    srv.files[FILE] = release_bytes[0]
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv(MIRROR_ENV, srv.url)
    monkeypatch.delenv(WEIGHTS_DIR_ENV, raising=False)
    yield srv
    srv.close()


def cache(tmp_path) -> Path:
    return tmp_path / "torch_home" / "hub" / "checkpoints"


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# --------------------------------------------------------------------------- the table
def test_every_variant_has_its_official_files_with_the_paper_figures():
    for name, variant in VARIANTS.items():
        tags = {r.tag: r for r in releases_for(name, "classification")}
        assert "dist_300e" in tags, name
        if variant.top1_450e is not None:
            assert tags["dist_450e"].paper["top1"] == variant.top1_450e
            assert find_release(name).tag == "dist_450e"     # the best file is the default
        if variant.top1_300e is not None:
            assert tags["dist_300e"].paper["top1"] == variant.top1_300e
    assert find_release("repvit_m0_6").filename == FILE
    assert find_release("repvit_sam", kind="sam").filename == "repvit_sam.pt"
    assert len({r.filename for r in RELEASES}) == len(RELEASES)
    assert all(r.url.startswith("https://github.com/") and r.url.endswith(r.filename) for r in RELEASES)


def test_tags_and_specs_are_checked_with_a_helpful_message():
    assert parse_spec("repvit_m1_1:dist_300e") == ("repvit_m1_1", "dist_300e")
    assert parse_spec("repvit_m1_1") == ("repvit_m1_1", None)
    with pytest.raises(ValueError, match="dist_300e, dist_450e"):
        find_release("repvit_m1_1", "dist_999e")
    with pytest.raises(ValueError, match="Mask R-CNN"):
        find_release("repvit_m1_1", "coco")
    with pytest.raises(ValueError, match="no official classification weights for 'roadmap_step0'"):
        find_release("roadmap_step0")
    with pytest.raises(ValueError, match="not both"):
        create_model(NAME, pretrained=True, checkpoint="x.pth")
    with pytest.raises(TypeError, match="tag"):
        create_model(NAME, pretrained=1.5)


# --------------------------------------------------------------------------- downloading
def test_a_good_download_is_cached_recorded_and_loaded_exactly(server, tmp_path, release_bytes):
    model = create_model(NAME, pretrained=True, progress=False)
    path = cache(tmp_path) / FILE
    assert leftovers(cache(tmp_path)) == [FILE, FILE + ".sha256"]          # no temporary file left
    assert read_recorded_sha256(path) == sha256_of(path)
    assert path.read_bytes() == release_bytes[0]
    assert not model.training and model.distillation and model.pretrained_tag == "repvit_m0_6:dist_300e"
    for key, value in model.state_dict().items():
        assert torch.equal(value, release_bytes[1][key]), key
    assert len(model.class_names) == 1000 and model.class_names[281] == "tabby"
    # A second load reads the cache: no request reaches the server.
    create_model(NAME, pretrained="dist_300e", progress=False)
    assert server.requests == [FILE]


def test_a_404_names_the_url_and_where_to_put_the_file(server, tmp_path):
    server.mode[FILE] = "404"
    with pytest.raises(WeightsUnavailableError) as err:
        create_model(NAME, pretrained=True, progress=False)
    message = str(err.value)
    assert f"{server.url}/{FILE}" in message and "404" in message
    assert find_release(NAME).url in message and str(cache(tmp_path) / FILE) in message
    assert WEIGHTS_DIR_ENV in message
    assert leftovers(cache(tmp_path)) == []


def test_a_connection_cut_halfway_leaves_nothing_behind(server, tmp_path):
    server.mode[FILE] = "cut"
    with pytest.raises(WeightsUnavailableError, match="closed after"):
        create_model(NAME, pretrained=True, progress=False)
    assert leftovers(cache(tmp_path)) == []
    server.mode[FILE] = "ok"                                # the next try downloads it whole
    create_model(NAME, pretrained=True, progress=False)
    assert leftovers(cache(tmp_path)) == [FILE, FILE + ".sha256"]


def test_a_corrupted_cache_entry_is_an_error_naming_both_digests(server, tmp_path):
    create_model(NAME, pretrained=True, progress=False)
    path = cache(tmp_path) / FILE
    recorded = read_recorded_sha256(path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(HashMismatchError) as err:
        create_model(NAME, pretrained=True, progress=False)
    assert recorded in str(err.value) and sha256_of(path) in str(err.value) and "delete" in str(err.value)
    assert server.requests == [FILE]


def test_a_pinned_digest_refuses_a_different_download(server, tmp_path, monkeypatch):
    from repvit.models import factory, releases
    wrong = releases.Release(NAME, "dist_300e", FILE, paper={"top1": 74.1}, sha256="0" * 64)
    monkeypatch.setattr(factory, "find_release", lambda *a, **k: wrong)
    with pytest.raises(HashMismatchError, match="0000000000"):
        create_model(NAME, pretrained=True, progress=False)
    assert leftovers(cache(tmp_path)) == []


def test_offline_weights_folder_is_used_without_a_download(server, tmp_path, monkeypatch, release_bytes):
    folder = tmp_path / "offline"
    folder.mkdir()
    (folder / FILE).write_bytes(release_bytes[0])
    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(folder))
    model = create_model(NAME, pretrained=True, progress=False)
    assert server.requests == [] and leftovers(cache(tmp_path)) == []
    assert torch.equal(model.state_dict()["features.1.token_mixer.0.conv.c.weight"],
                       release_bytes[1]["features.1.token_mixer.0.conv.c.weight"])
    assert read_recorded_sha256(folder / FILE) == sha256_of(folder / FILE)


def test_offline_without_the_file_says_what_to_fetch_and_where(server, tmp_path, monkeypatch):
    folder = tmp_path / "offline"
    folder.mkdir()
    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(folder))
    with socket.socket() as s:                              # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    monkeypatch.setenv(MIRROR_ENV, f"http://127.0.0.1:{dead}")
    with pytest.raises(WeightsUnavailableError) as err:
        create_model(NAME, pretrained=True, progress=False)
    message = str(err.value)
    assert str(folder / FILE) in message and find_release(NAME).url in message
    assert str(cache(tmp_path) / FILE) in message


def test_a_release_file_that_would_run_code_is_refused(server, tmp_path, monkeypatch):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))
    import io
    buffer = io.BytesIO()
    torch.save({"model": {"w": torch.zeros(1)}, "args": argparse.Namespace(payload=Evil())}, buffer)
    server.files[FILE] = buffer.getvalue()
    with pytest.raises(CheckpointError, match="refused"):
        create_model(NAME, pretrained=True, progress=False)
    assert not marker.exists()


# --------------------------------------------------------------------------- what the weights become
def test_a_new_head_keeps_the_pretrained_backbone(server, release_bytes):
    model = create_model(NAME, pretrained=True, num_classes=10, progress=False)
    assert model.num_classes == 10 and not model.distillation and getattr(model, "class_names", None) is None
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in release_bytes[1].items() if k.startswith("features."))
    backbone = create_model(NAME, pretrained=True, features_only=True, progress=False)
    assert torch.equal(backbone.state_dict()["features.0.0.c.weight"], release_bytes[1]["features.0.0.c.weight"])


def test_fused_pretrained_computes_what_the_unfused_one_does(server):
    unfused = create_model(NAME, pretrained=True, progress=False)
    fused = create_model(NAME, pretrained=True, fused=True, progress=False)
    assert fused.fused and fused.class_names == unfused.class_names
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), unfused(x), atol=1e-4, rtol=1e-4)


def test_torch_hub_loads_a_local_clone(server, release_bytes):
    model = torch.hub.load(str(REPO), NAME, source="local", pretrained=True, progress=False)
    assert model.class_names[0] == "tench"
    assert torch.equal(model.state_dict()["classifier.classifier.l.weight"],
                       release_bytes[1]["classifier.classifier.l.weight"])
    plain = torch.hub.load(str(REPO), "repvit_m1_1", source="local", num_classes=7)
    assert plain.num_classes == 7


# --------------------------------------------------------------------------- the command line
def test_cli_predict_prints_imagenet_names(server, imagenette_root, capsys):
    from repvit.cli import main
    image = sorted((imagenette_root / "val" / "n03888257").iterdir())[0]
    assert main(["predict", "--pretrained", NAME, str(image), "--topk", "2", "--device", "cpu"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == str(image) and out[1].strip().endswith("parachute") and "%" in out[1]


def test_cli_eval_matches_imagenet_folders_by_wordnet_id(server, tiny_imagenette, tmp_path, capsys):
    from repvit.cli import main
    report = tmp_path / "eval.json"
    assert main(["eval", "--pretrained", f"{NAME}:dist_300e", "--data", str(tiny_imagenette), "--workers", "0",
                 "--device", "cpu", "--report", str(report)]) == 0
    import json
    result = json.loads(report.read_text())
    # Every image is called "parachute": right for exactly the parachute folder, one class in ten.
    assert result["images"] == 40 and result["top1"] == pytest.approx(10.0)
    assert result["pretrained"] == f"{NAME}:dist_300e" and result["checkpoint"] is None


def test_cli_export_and_bench_take_pretrained(server, tmp_path, monkeypatch, capsys):
    from repvit.cli import main
    from repvit.export import torchscript as fmt_ts
    monkeypatch.chdir(tmp_path)
    assert main(["export", "--pretrained", NAME, "--format", "torchscript", "--output", "m.pt", "--img-size", "64",
                 "--num-real", "0", "--num-random", "1"]) == 0
    import json
    _, meta = fmt_ts.load(tmp_path / "m.pt")
    assert json.loads(meta["class_names"])[PARACHUTE] == "parachute"
    assert main(["bench", "--pretrained", NAME, "--runtimes", "eager-fused", "--img-size", "64", "--warmup", "0",
                 "--rounds", "1", "--repeats", "1", "--threads", "1", "--quiet"]) == 0
    assert NAME in capsys.readouterr().out
    with pytest.raises(SystemExit):  # one source of weights at a time
        main(["predict", "--pretrained", NAME, "--checkpoint", "x.pth", "img.jpg"])


def test_cli_train_fine_tunes_from_pretrained(server, tiny_imagenette, tmp_path, release_bytes):
    from repvit.cli import main
    from .test_train import TINY
    args = [a for a in TINY if a not in ("--model", NAME)]
    out = tmp_path / "run"
    assert main(["train", "--data", str(tiny_imagenette), "--output", str(out), "--pretrained", NAME, *args]) == 0
    log = (out / "train.log").read_text()
    assert f"--pretrained {NAME}" in log and "new random weights" in log and "model repvit_m0_6" in log
    with pytest.raises(ValueError, match="--model is repvit_m1_1"):
        from repvit.classification import config as train_config
        train_config.parse_args(["--data", "x", "--pretrained", NAME, "--model", "repvit_m1_1"])


def test_cli_weights_lists_fetches_and_shows_local_copies(server, tmp_path, capsys):
    from repvit.cli import main
    assert main(["weights"]) == 0
    out = capsys.readouterr().out
    assert "repvit_m2_3:dist_450e" in out and "repvit_sam:sam" in out and "not here (repvit_m0_6_distill_300e.pth)" in out
    assert main(["weights", "--download", f"{NAME}:dist_300e"]) == 0
    captured = capsys.readouterr()
    assert str(cache(tmp_path) / FILE) in captured.out and FILE in captured.err   # the progress bar names the file
    assert main(["weights", "--json"]) == 0
    import json
    rows = {r["spec"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows[f"{NAME}:dist_300e"]["local"] == str(cache(tmp_path) / FILE)
    assert rows["repvit_m1_1:coco"]["paper"] == {"box_ap": 39.8, "mask_ap": 37.2}
    assert main(["weights", "--download", "repvit_m1_1:dist_999e"]) == 2
    assert "repvit_m1_1:dist_300e" in capsys.readouterr().err


def test_the_readme_quick_start_runs_as_written(server, imagenette_root, tmp_path, monkeypatch, capsys):
    """The README's first Python block, verbatim, against the local server (with a photo named cat.jpg)."""
    text = (REPO / "README.md").read_text()
    block = text.split("```python\n", 1)[1].split("```", 1)[0]
    assert 'create_model("repvit_m1_1", pretrained=True)' in block
    server.files["repvit_m1_1_distill_450e.pth"] = official_file("repvit_m1_1")[0]
    photo = sorted((imagenette_root / "val" / "n03888257").iterdir())[0]
    (tmp_path / "cat.jpg").write_bytes(photo.read_bytes())
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert printed.startswith("[('parachute', ") and server.requests == ["repvit_m1_1_distill_450e.pth"]


def test_a_detection_backbone_starts_from_official_weights(server, release_bytes):
    from repvit.dense.backbone import RepViTBackbone
    for spec in (True, "dist_300e", f"{NAME}:dist_300e", NAME):
        backbone = RepViTBackbone(NAME, pretrained=spec)
        for key, value in backbone.body.state_dict().items():
            assert torch.equal(value, release_bytes[1][key]), (spec, key)
    assert server.requests == [FILE]
    with pytest.raises(ValueError, match="holds repvit_m1_1 weights"):
        RepViTBackbone(NAME, pretrained="repvit_m1_1")
    with pytest.raises(ValueError, match="not both"):
        RepViTBackbone(NAME).load_weights(checkpoint="x.pth", pretrained=True)


# The download links as the official READMEs publish them (github.com/THU-MIG/RepViT: README.md,
# detection/README.md, segmentation/README.md, sam/README.md; the first release's M1/M2/M3 as the
# README of 2023-07-19 and 2023-07-27 links them, under the authors' earlier repository and without
# the "e" of later file names; the draft links of 2023-07-18, ".../download/untagged-.../", never
# became public). Every file of the table must be one of them, and every .pth/.pt link in the table.
_V1 = "https://github.com/THU-MIG/RepViT/releases/download/v1.0/"
OFFICIAL_LINKS = {
    *(f"{_V1}{m}_distill_{e}.pth" for m in ("repvit_m0_9", "repvit_m1_0", "repvit_m1_1", "repvit_m1_5", "repvit_m2_3")
      for e in ("300e", "450e")),
    f"{_V1}repvit_m0_6_distill_300e.pth",
    *(f"{_V1}{m}_{task}.pth" for m in ("repvit_m1_1", "repvit_m1_5", "repvit_m2_3") for task in ("coco", "ade20k")),
    f"{_V1}repvit_sam.pt",
    "https://github.com/jameslahm/RepViT/releases/download/v1.0/repvit_m1_distill_300.pth",
    "https://github.com/jameslahm/RepViT/releases/download/v1.0/repvit_m2_distill_300.pth",
    "https://github.com/jameslahm/RepViT/releases/download/v1.0/repvit_m3_distill_300.pth",
    # EdgeTAM's README links github.com/facebookresearch/EdgeTAM/tree/main/checkpoints/edgetam.pt (the page);
    # the file is served under raw/, pinned to the commit that added it
    "https://github.com/facebookresearch/EdgeTAM/raw/1c2ec2184a3313a5657ac924f450ddf72b56eebf/checkpoints/edgetam.pt",
}


def test_every_release_url_is_a_link_the_official_readmes_publish():
    assert {r.url for r in RELEASES} == OFFICIAL_LINKS
    legacy = {r.model: r.url for r in RELEASES if r.model in ("repvit_m1", "repvit_m2", "repvit_m3")}
    assert legacy["repvit_m2"].endswith("jameslahm/RepViT/releases/download/v1.0/repvit_m2_distill_300.pth")
