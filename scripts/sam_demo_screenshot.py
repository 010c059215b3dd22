"""Screenshot of the RepViT-SAM demo page with a mask drawn, taken in headless Chromium.

Starts ``repvit sam demo`` (random weights unless other weight options follow ``--``), opens the
page in headless Chromium, uploads an image through the page's file input, clicks a point on the
"point" tab as a user would, waits for the mask, and saves a PNG of the page:

    python scripts/sam_demo_screenshot.py                        # -> docs/sam-demo.png
    python scripts/sam_demo_screenshot.py -o shot.png -- --pretrained

Chromium is driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: JSON
messages ending in a NUL byte on file descriptors 3 and 4), so nothing beyond the standard
library and the Chromium binary is needed. The default image is matplotlib's sample photo of
Grace Hopper (a US Navy photograph in the public domain); without matplotlib a drawn scene is used.
"""
from __future__ import annotations

import argparse
import base64
import fcntl
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


class DevTools:
    """A minimal Chrome DevTools protocol client over Chromium's debugging pipe."""

    def __init__(self, chromium: str, flags: list):
        to_browser = os.pipe()
        from_browser = os.pipe()
        # move the ends the child needs above 4, so placing them on 3 and 4 cannot clobber each other
        self._child_in = fcntl.fcntl(to_browser[0], fcntl.F_DUPFD_CLOEXEC, 10)
        self._child_out = fcntl.fcntl(from_browser[1], fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(to_browser[0])
        os.close(from_browser[1])
        self._write_fd, self._read_fd = to_browser[1], from_browser[0]

        def place_pipe():
            os.dup2(self._child_in, 3)
            os.dup2(self._child_out, 4)

        self.process = subprocess.Popen([chromium, "--remote-debugging-pipe", *flags], preexec_fn=place_pipe,
                                        pass_fds=(3, 4), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(self._child_in)
        os.close(self._child_out)
        self._buffer = b""
        self._next_id = 0
        self.session = None

    def call(self, method: str, timeout: float = 60, **params) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if self.session and not method.startswith("Target."):
            message["sessionId"] = self.session
        os.write(self._write_fd, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def _read(self, deadline: float) -> dict:
        import select
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._read_fd], [], [], left)[0]:
                raise TimeoutError("Chromium did not answer")
            chunk = os.read(self._read_fd, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed the debugging pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, what: str, timeout: float):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.25)
        raise TimeoutError(f"the page did not {what} within {timeout:.0f} s")

    def click(self, x: float, y: float) -> None:
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=5)
        except Exception:
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        os.close(self._write_fd)
        os.close(self._read_fd)


def default_image(folder: Path) -> Path:
    try:
        from matplotlib import cbook
        return Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    except (ImportError, OSError):
        pass
    from PIL import Image, ImageDraw
    scene = Image.new("RGB", (640, 480), (200, 210, 225))
    draw = ImageDraw.Draw(scene)
    draw.rectangle([0, 330, 640, 480], fill=(120, 150, 90))
    draw.ellipse([120, 160, 300, 340], fill=(210, 60, 50))
    draw.rectangle([360, 120, 540, 360], fill=(60, 90, 170))
    path = folder / "scene.png"
    scene.save(path)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_server(url: str, server: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"repvit sam demo exited with status {server.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", "-o", default=str(REPO_ROOT / "docs" / "sam-demo.png"))
    parser.add_argument("--image", help="image to upload (default: matplotlib's Grace Hopper sample photo)")
    parser.add_argument("--click", default="0.5,0.62", metavar="FX,FY",
                        help="where to click, as fractions of the shown image's width and height")
    parser.add_argument("--width", type=int, default=1280, help="browser window width in pixels")
    parser.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser")
                        or shutil.which("google-chrome"))
    parser.add_argument("demo_args", nargs="*", help="after --: weight options for repvit sam demo "
                                                     "(default --random-weights)")
    args = parser.parse_args(argv)
    if not args.chromium:
        parser.error("no Chromium found: install it or pass --chromium PATH")
    fx, fy = (float(v) for v in args.click.split(","))
    workdir = Path(tempfile.mkdtemp(prefix="sam-demo-shot-"))
    image = Path(args.image) if args.image else default_image(workdir)
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    server = subprocess.Popen([sys.executable, "-m", "repvit", "sam", "demo", "--port", str(port),
                               *(args.demo_args or ["--random-weights"])], cwd=REPO_ROOT)
    browser = None
    try:
        wait_for_server(url, server, timeout=180)
        flags = ["--headless", "--disable-gpu", "--hide-scrollbars", "--no-first-run", "--mute-audio",
                 f"--user-data-dir={workdir / 'profile'}", f"--window-size={args.width},1000"]
        if os.geteuid() == 0:
            flags.append("--no-sandbox")  # Chromium refuses to run as root with its sandbox
        browser = DevTools(args.chromium, flags)
        target = browser.call("Target.createTarget", url="about:blank")["targetId"]
        browser.session = browser.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        browser.call("Emulation.setDeviceMetricsOverride", width=args.width, height=1000, deviceScaleFactor=1,
                     mobile=False)
        browser.call("Page.enable")
        browser.call("Page.navigate", url=url)
        browser.wait_for("document.querySelector('input[type=file]') !== null", "show its upload box", 60)

        root = browser.call("DOM.getDocument")["root"]["nodeId"]
        upload = browser.call("DOM.querySelector", nodeId=root, selector="input[type=file]")["nodeId"]
        browser.call("DOM.setFileInputFiles", nodeId=upload, files=[str(image.resolve())])
        browser.wait_for("document.querySelector('#sam-status').innerText.includes('Image encoder')",
                         "finish the image encoder", 180)
        view = "document.querySelector('#point-view img')"
        browser.wait_for(f"{view} && {view}.complete && {view}.naturalWidth > 0", "show the image to click", 30)
        before = browser.evaluate(f"{view}.src")
        box = browser.evaluate(f"(() => {{ const r = {view}.getBoundingClientRect(); "
                               "return [r.left, r.top, r.width, r.height]; })()")
        x, y = box[0] + fx * box[2], box[1] + fy * box[3]
        browser.click(x, y)
        browser.wait_for("document.querySelector('#sam-status').innerText.includes('Mask decoder')",
                         "draw the mask", 60)
        browser.wait_for(f"{view}.src !== {json.dumps(before)} && {view}.complete", "show the overlay", 30)
        time.sleep(1.0)  # let the table and the file box finish rendering
        height = browser.evaluate("document.documentElement.scrollHeight")
        browser.call("Emulation.setDeviceMetricsOverride", width=args.width, height=int(height),
                     deviceScaleFactor=1, mobile=False)
        time.sleep(0.5)
        shot = browser.call("Page.captureScreenshot", format="png")["data"]
        output = Path(args.output)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_bytes(base64.b64decode(shot))
        print(f"wrote {output} ({args.width}x{height})")
    finally:
        if browser is not None:
            browser.close()
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
