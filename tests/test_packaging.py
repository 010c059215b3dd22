"""``python -m build`` makes an sdist and a wheel (the wheel built from the sdist) that install into
a clean virtual environment and work there, under the distribution name we can publish."""
from __future__ import annotations

import subprocess
import sys
import sysconfig
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DIST_NAME = "repvit-pytorch"   # "repvit" on PyPI belongs to an unrelated project


def _tracked_copy(dest: Path) -> Path:
    """The checkout's tracked files (and untracked, not ignored ones), so the build never writes into it."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, files):
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            (dest / name).write_bytes(src.read_bytes())
    return dest


@pytest.mark.slow
def test_sdist_and_wheel_install_and_run_in_a_clean_venv(tmp_path):
    source = _tracked_copy(tmp_path / "src")
    dist = tmp_path / "dist"
    build = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(source)],
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    assert "deprecated" not in build.stdout + build.stderr            # e.g. project.license as a table
    sdists, wheels = list(dist.glob("*.tar.gz")), list(dist.glob("*.whl"))
    assert len(sdists) == 1 and len(wheels) == 1 and wheels[0].name.startswith("repvit_pytorch-")
    with tarfile.open(sdists[0]) as tar:
        names = {Path(n).name for n in tar.getnames()}
    assert {"LICENSE", "README.md", "pyproject.toml", "factory.py", "pretrained.py"} <= names
    with zipfile.ZipFile(wheels[0]) as whl:
        names = whl.namelist()
        metadata = next(whl.read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
    assert "repvit/models/releases.py" in names and not any(n.startswith("tests/") for n in names)
    assert f"Name: {DIST_NAME}" in metadata and "License-Expression: Apache-2.0" in metadata

    env = tmp_path / "venv"
    venv.create(env, with_pip=True)
    python = env / "bin" / "python"
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheels[0])],
                             capture_output=True, text=True)
    assert install.returncode == 0, install.stderr[-3000:]
    # The heavy dependencies (torch, ...) are borrowed from this environment's site-packages as plain
    # paths, so no editable hook of the checkout is active: only the installed wheel provides repvit.
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "borrowed-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    smoke = ("import importlib.metadata as m, torch, repvit\n"
             f"assert repvit.__file__.startswith({str(env)!r}), repvit.__file__\n"
             f"assert m.version({DIST_NAME!r}) == repvit.__version__\n"
             "model = repvit.create_model('repvit_m0_6').eval()\n"
             "x = torch.randn(1, 3, 64, 64)\n"
             "fast = repvit.reparameterize(model)\n"
             "assert torch.allclose(model(x), fast(x), atol=1e-4)\n"
             "print('ok', repvit.__version__)\n")
    run = subprocess.run([str(python), "-c", smoke], capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0 and run.stdout.startswith("ok"), run.stderr[-3000:]
    info = subprocess.run([str(env / "bin" / "repvit"), "info"], capture_output=True, text=True, cwd=tmp_path)
    assert info.returncode == 0 and "repvit_m2_3" in info.stdout, info.stderr[-3000:]
