"""The demo page's live tab: a camera streamed through EdgeTAM's streaming tracker.

Without a browser, the tab's handlers (``repvit.demo.live_tab.LiveHandlers`` over
``repvit.demo.live_session``) are driven directly: the newest frame wins and every frame it replaces
is counted, two sessions never share a tracker, a frame or a click, an idle session frees its tracker,
and the view a session shows is the in-process tracker's mask on the same frames with the same click.

In a real Chromium (Debian's ``chromium``, which ``make setup`` installs; Playwright's own browser
download is not used) whose fake camera plays a Y4M clip made from the shared bedroom frames, two
visitors (two browser contexts) click different points on the live view: each page shows its own
object, equal to what a tracker run in-process on the frames that visitor's session received, with
the same click, computes. Seeded random EdgeTAM weights (``build_video_predictor(seed=0)``).
"""
from __future__ import annotations

import io
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("sam2", reason="EdgeTAM needs the edgetam extra (Meta's sam2)")

from repvit.data.images import overlay  # noqa: E402
from repvit.demo.live_session import LiveDemo  # noqa: E402
from repvit.demo.live_tab import LiveHandlers  # noqa: E402
from repvit.edgetam.streaming import StepResult  # noqa: E402

from .conftest import shared_data  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:cannot import name '_C':UserWarning",
                                        "ignore:.*post-processing.*:UserWarning")
SIZE = (320, 180)
CLICKS = ((130, 75), (230, 120))     # two visitors, two objects (frame pixels)


def bedroom(step: int, count: int) -> list:
    source = shared_data("videos/bedroom", pattern=f"{step * (count - 1):05d}.jpg")
    return [np.asarray(Image.open(source / f"{i:05d}.jpg").convert("RGB").resize(SIZE, Image.BILINEAR))
            for i in range(0, step * count, step)]


def wait_for(condition, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {seconds:g} s waiting for {what}")


class FakeTracker:
    """Records the frames and clicks it is given; ``step`` can be held until ``release`` is set.
    Its mask is a square at the last click, so a view tells which clicks made it."""

    def __init__(self, predictor, log: list, hold: threading.Event = None):
        self.frames, self.clicks, self.hold, self.index = [], [], hold, -1
        self.stepping = threading.Event()
        log.append(self)

    def step(self, frame):
        self.index += 1
        self.frames.append(int(frame[0, 0, 0]))   # each test frame is one flat value
        self.stepping.set()
        if self.hold is not None:
            assert self.hold.wait(10)
        return self._result(frame.shape[:2])

    def add_new_points_or_box(self, obj_id, points=None, labels=None, box=None):
        self.clicks.append((tuple(points[0]), int(labels[0])))
        return self._result((SIZE[1], SIZE[0]))

    def _result(self, shape):
        mask = np.zeros(shape, np.float32) - 1
        if self.clicks:
            x, y = (int(v) for v in self.clicks[-1][0])
            mask[max(0, y - 5):y + 5, max(0, x - 5):x + 5] = 1
        return StepResult(self.index, [1], mask[None])


def flat(value: int) -> np.ndarray:
    return np.full((SIZE[1], SIZE[0], 3), value, np.uint8)


def test_the_newest_frame_wins_and_each_frame_it_replaces_is_counted(tmp_path):
    made, hold = [], threading.Event()
    live = LiveDemo(None, tracker_factory=lambda p: FakeTracker(p, made, hold), keep_views=3, camera_view_every=0)
    handlers = LiveHandlers(live, under=tmp_path)
    view, status, session = handlers.frame(flat(1), None)
    assert Path(view).parent.parent.parent == tmp_path.resolve() and "Click the object" in status
    assert np.array_equal(np.asarray(Image.open(view)), flat(1))      # before a click: the camera as it is
    hold.set()
    handlers.click(session, 100, 50, "object (positive)")
    wait_for(lambda: session.frames_tracked == 0 and made and made[0].clicks, 10, "the first click")
    hold.clear()
    made[0].stepping.clear()
    handlers.frame(flat(2), session)                  # tracked; held inside step
    assert made[0].stepping.wait(10)
    for value in (3, 4, 5):                           # arrive while 2 is tracked: 3 and 4 are replaced
        handlers.frame(flat(value), session)
    assert (session.frames_received, session.frames_dropped, session.frames_tracked) == (4, 2, 0)
    hold.set()
    wait_for(lambda: session.frames_tracked == 2, 10, "frames 2 and 5")
    assert made[0].frames == [1, 2, 5]                # the clicked frame, then the newest two
    view, status, _ = handlers.frame(flat(6), session)
    wait_for(lambda: session.frames_tracked == 3, 10, "frame 6")
    assert "3 frames tracked, 2 dropped" in handlers.frame(flat(7), session)[1]
    wait_for(lambda: session.frames_tracked == 4, 10, "frame 7")
    assert session.frames_received == session.frames_tracked + session.frames_dropped == 6
    assert len(list(session.views.folder.iterdir())) <= 3                  # keep_views
    session.close()
    assert not session.views.folder.exists()
    live.close()


def test_two_sessions_never_share_a_tracker_a_frame_or_a_click(tmp_path):
    made = []
    live = LiveDemo(None, tracker_factory=lambda p: FakeTracker(p, made))
    handlers = LiveHandlers(live, under=tmp_path)
    a = handlers.frame(flat(10), None)[2]
    b = handlers.frame(flat(20), None)[2]
    handlers.click(a, *CLICKS[0], "object (positive)")
    wait_for(lambda: len(made) == 1 and made[0].clicks, 10, "visitor A's tracker")
    handlers.click(b, *CLICKS[1], "object (positive)")
    wait_for(lambda: len(made) == 2 and made[1].clicks, 10, "visitor B's tracker")
    for k in range(3):
        handlers.frame(flat(11 + k), a)
        wait_for(lambda: a.frames_tracked == k + 1, 10, "A's frame")
        handlers.frame(flat(21 + k), b)
        wait_for(lambda: b.frames_tracked == k + 1, 10, "B's frame")
    tracker_a, tracker_b = made
    assert tracker_a.frames == [10, 11, 12, 13] and tracker_a.clicks == [(CLICKS[0], 1)]
    assert tracker_b.frames == [20, 21, 22, 23] and tracker_b.clicks == [(CLICKS[1], 1)]
    # each view shows its own object: the fake's square at that visitor's click
    for session, (x, y), value in ((a, CLICKS[0], 13), (b, CLICKS[1], 23)):
        shown = np.asarray(Image.open(session._view))
        mask = np.zeros(shown.shape[:2], bool)
        mask[y - 5:y + 5, x - 5:x + 5] = True
        assert np.array_equal(shown, overlay(flat(value), [mask]))
    assert a.views.folder != b.views.folder
    a.close()
    handlers.frame(flat(24), b)
    wait_for(lambda: b.frames_tracked == 4, 10, "B after A left")
    assert handlers.frame(flat(11), a)[2] is not a    # a closed session's visitor gets a new one
    live.close()


def test_sessions_take_turns_at_the_model(tmp_path):
    made = []

    class Slow(FakeTracker):
        def step(self, frame):
            time.sleep(0.02)
            return super().step(frame)

    live = LiveDemo(None, tracker_factory=lambda p: Slow(p, made))
    handlers = LiveHandlers(live, under=tmp_path)
    a = handlers.frame(flat(10), None)[2]
    b = handlers.frame(flat(20), None)[2]
    handlers.click(a, 5, 5, "object (positive)")
    stop = threading.Event()

    def stream_a():      # A always has a frame waiting: its worker asks for the model again at once
        while not stop.is_set():
            handlers.frame(flat(11), a)
            time.sleep(0.001)
    streaming = threading.Thread(target=stream_a)
    streaming.start()
    try:
        wait_for(lambda: a.frames_tracked >= 5, 10, "A to stream")
        handlers.click(b, 5, 5, "object (positive)")
        for k in range(1, 4):
            handlers.frame(flat(20 + k), b)
            wait_for(lambda: b.frames_tracked == k, 10, f"B's frame {k} while A streams")
    finally:
        stop.set()
        streaming.join()
    assert made[1].frames == [20, 21, 22, 23]
    live.close()


def test_an_idle_session_frees_its_tracker_and_reset_forgets_the_object(tmp_path):
    made = []
    live = LiveDemo(None, idle_seconds=0.5, tracker_factory=lambda p: FakeTracker(p, made), camera_view_every=0)
    handlers = LiveHandlers(live, under=tmp_path)
    session = handlers.frame(flat(1), None)[2]
    handlers.click(session, 10, 10, "object (positive)")
    handlers.frame(flat(2), session)
    wait_for(lambda: session.frames_tracked == 1, 10, "a tracked frame")
    handlers.click(session, 30, 40, "background (negative)")      # a correction: the same tracker
    wait_for(lambda: len(made[0].clicks) == 2, 10, "the correction")
    assert made[0].clicks == [((10, 10), 1), ((30, 40), 0)] and len(made) == 1
    worker = session._worker
    wait_for(lambda: session._tracker is None, 5, "the idle tracker to be freed")
    worker.join(5)
    assert not worker.is_alive()
    view, status, _ = handlers.frame(flat(3), session)
    assert "tracker was freed" in status and np.array_equal(np.asarray(Image.open(view)), flat(3))
    handlers.click(session, 20, 20, "object (positive)")
    handlers.frame(flat(4), session)
    wait_for(lambda: session.frames_tracked == 1, 10, "the new tracker's frame")
    view, status, _ = handlers.reset(session)
    assert (session._tracker, session.frames_tracked, session.frames_dropped) == (None, 0, 0)
    assert status.startswith("Click the object") and np.array_equal(np.asarray(Image.open(view)), flat(3))
    assert [t.frames for t in made] == [[1, 2], [3, 4]]
    live.close()


def test_clear_errors(tmp_path):
    live = LiveDemo(None, tracker_factory=lambda p: FakeTracker(p, []))
    handlers = LiveHandlers(live, under=tmp_path)
    with pytest.raises(ValueError, match="start the camera first"):
        handlers.click(None, 1, 1, "object (positive)")
    session = handlers.frame(flat(1), None)[2]
    with pytest.raises(ValueError, match=r"click \(320, 5\) is outside the 320x180 view"):
        handlers.click(session, 320, 5, "object (positive)")
    with pytest.raises(ValueError, match="the first click marks the object"):
        handlers.click(session, 3, 5, "background (negative)")
    with pytest.raises(ValueError, match="a frame is an HxWx3 RGB array"):
        handlers.frame(np.zeros((4, 4), np.uint8), session)
    with pytest.raises(ValueError, match="idle_seconds must be a positive number"):
        LiveDemo(None, idle_seconds=0)
    live.close()


@pytest.fixture(scope="module")
def predictor():
    from repvit.edgetam import build_video_predictor
    return build_video_predictor(seed=0, fused=True)


def reference_masks(predictor, frames: list, click) -> list:
    """Object 1's masks from a fresh tracker: ``click`` on ``frames[0]``, then the rest streamed."""
    from repvit.edgetam.stream_torch import TorchStreamingTracker
    tracker = TorchStreamingTracker(predictor)
    tracker.step(frames[0])
    masks = [tracker.add_new_points_or_box(1, points=[click], labels=[1]).mask(1)]
    return masks + [tracker.step(frame).mask(1) for frame in frames[1:]]


def centroid(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean(), ys.mean()])


def test_a_session_shows_what_the_tracker_computes(predictor, tmp_path):
    frames = bedroom(step=10, count=3)
    live = LiveDemo(predictor)
    handlers = LiveHandlers(live, under=tmp_path)
    session = handlers.frame(frames[0], None)[2]
    handlers.click(session, *CLICKS[0], "object (positive)")
    for k, frame in enumerate(frames[1:], 1):
        handlers.frame(frame, session)     # one at a time: nothing is dropped
        wait_for(lambda: session.frames_tracked == k, 60, f"frame {k}")
    want = reference_masks(predictor, frames, CLICKS[0])
    assert want[-1].any() and not want[-1].all()
    assert np.abs(centroid(want[-1]) - centroid(want[0])).max() > 2        # the mask moved with the frames
    shown = np.asarray(Image.open(session._view))
    assert np.array_equal(shown, overlay(frames[-1], [want[-1]]))
    assert session.frames_dropped == 0 and "2 frames tracked, 0 dropped" in session.status()
    live.close()


# ---------------------------------------------------------------------------------------- the browser
def chromium() -> str:
    """Debian's Chromium (``make setup``), or ``$REPVIT_CHROMIUM``."""
    for candidate in (os.environ.get("REPVIT_CHROMIUM"), "/usr/lib/chromium/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.skip("no Chromium: `make setup` installs Debian's chromium package (or set REPVIT_CHROMIUM)")


def write_y4m(frames: list, path: Path, fps: int) -> Path:
    """``frames`` (RGB) as a YUV4MPEG2 clip, BT.601 limited range, 4:2:0: what Chromium's fake camera plays."""
    height, width = frames[0].shape[:2]
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for rgb in frames:
            r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
            y = 16 + (65.481 * r + 128.553 * g + 24.966 * b) / 255
            cb = 128 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255
            cr = 128 + (112.0 * r - 93.786 * g - 18.214 * b) / 255
            f.write(b"FRAME\n")
            for plane in (y, cb.reshape(height // 2, 2, width // 2, 2).mean((1, 3)),
                          cr.reshape(height // 2, 2, width // 2, 2).mean((1, 3))):
                f.write(np.clip(np.round(plane), 0, 255).astype(np.uint8).tobytes())
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def click_view(page, x: float, y: float) -> None:
    """Click frame pixel (x, y) of the live view, wherever the page has drawn the image (Gradio maps the
    click back the same way: the image scaled down to fit, never up, and centred)."""
    page.wait_for_function("() => { const e = document.querySelector('#live-view img');"
                           " return e !== null && e.complete && e.naturalWidth > 0; }", timeout=30_000)
    img = page.locator("#live-view img").first
    left, top, scale = img.evaluate("""e => { const r = e.getBoundingClientRect();
        const s = Math.min(r.width / e.naturalWidth, r.height / e.naturalHeight, 1);
        return [(r.width - e.naturalWidth * s) / 2, (r.height - e.naturalHeight * s) / 2, s]; }""")
    img.click(position={"x": left + x * scale, "y": top + y * scale})


def mark_object(page, session, x: float, y: float, tries: int = 4):
    """Click the object at (x, y) until the session's tracker has exactly that click; returns the tracker.

    A click that lands while the page swaps the view's image may be dropped or misplaced by the page
    itself (Gradio measures the image as it loads): such a click is retried (after *forget the
    object* when it was misplaced). A wrong mapping fails every try."""
    got = []
    for _ in range(tries):
        click_view(page, x, y)
        try:
            wait_for(lambda: session._tracking, 5, "the click to reach the server")
        except AssertionError:
            got.append("dropped")
            continue
        tracker = wait_for(lambda: session._tracker if session._tracker is not None and session._tracker.clicks
                           else None, 90, "the tracker to take the click")
        (click, _), = tracker.clicks
        if np.abs(np.subtract(click, (x, y))).max() <= 1:
            return tracker
        got.append(click)
        page.get_by_role("button", name="forget the object").click()
        wait_for(lambda: not session._tracking, 10, "the reset")
    raise AssertionError(f"clicking ({x}, {y}) on the live view gave {got}")


def test_two_visitors_track_their_own_objects_in_chromium(predictor, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="the browser test needs playwright (the dev extra)")
    browser_path = chromium()
    pytest.importorskip("segment_anything")
    from repvit.demo.page import build_app, launch
    from repvit.edgetam.stream_torch import TorchStreamingTracker
    from repvit.sam import build_sam
    from repvit.sam.demo import SamDemo

    class Recording(TorchStreamingTracker):
        """What the server's tracker was given and gave back."""

        def __init__(self, p):
            super().__init__(p)
            self.clicks, self.frames, self.masks = [], [], []

        def step(self, frame):
            result = super().step(frame)
            self.frames.append(frame.copy())
            self.masks.append(result.mask(1).copy() if 1 in result.object_ids else None)
            return result

        def add_new_points_or_box(self, obj_id, points=None, labels=None, box=None):
            self.clicks.append((tuple(float(v) for v in points[0]), len(self.frames) - 1))
            return super().add_new_points_or_box(obj_id, points=points, labels=labels, box=box)

    # 12 s before the camera loops: a tracker at a frame a second never meets the frame it was clicked on again
    clip = write_y4m(bedroom(step=4, count=48), tmp_path / "bedroom.y4m", fps=4)
    live = LiveDemo(predictor, weights="random (seed 0)", tracker_factory=Recording)
    sessions, new_session = [], live.new_session
    live.new_session = lambda **kwargs: sessions.append(new_session(**kwargs)) or sessions[-1]   # in visitor order
    app = build_app(SamDemo(build_sam(fused=True), weights="random", output_dir=tmp_path / "masks"), live=live)
    port = free_port()
    launch(app, port=port, block=False)
    trackers, shown = [], []
    try:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=browser_path, args=[
                "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-video-capture={clip}"])
            pages = []
            for visitor, (x, y) in enumerate(CLICKS):
                page = browser.new_context(viewport={"width": 1100, "height": 800}).new_page()
                page.goto(f"http://127.0.0.1:{port}/")
                page.get_by_role("tab", name="live (EdgeTAM, webcam)").click()
                page.get_by_text("Click to Access Webcam").click()
                page.locator("#live-camera button", has_text="Record").click()
                wait_for(lambda: len(sessions) == visitor + 1, 30, f"visitor {visitor}'s first frame")
                trackers.append(mark_object(page, sessions[visitor], x, y))
                pages.append(page)

            def tracked_view(visitor):
                """The page's view once it shows the second frame tracked after the click: (frame index, image)."""
                tracker, page = trackers[visitor], pages[visitor]
                src = page.locator("#live-view img").first.get_attribute("src") or ""
                if "tracked-" not in src or len(tracker.frames) < 3:
                    return None
                image = np.asarray(Image.open(io.BytesIO(page.request.get(src).body())).convert("RGB"))
                for k in range(2, len(tracker.frames)):
                    if np.array_equal(image, overlay(tracker.frames[k], [tracker.masks[k]])):
                        return k, image
                return None

            for visitor in range(len(CLICKS)):
                shown.append(wait_for(lambda: tracked_view(visitor), 90, f"visitor {visitor}'s tracked view"))
            status = pages[0].locator("#live-status").inner_text()
            browser.close()
    finally:
        app.close()
        live.close()
    assert "frames/s" in status and "dropped (the newest frame wins)" in status
    assert len(sessions) == 2 and trackers[0] is not trackers[1]      # a session and a tracker per visitor
    for visitor, (x, y) in enumerate(CLICKS):
        tracker = trackers[visitor]
        (click, on_frame), = tracker.clicks     # this visitor's click alone, on the frame the page showed
        assert on_frame == 0 and np.abs(np.subtract(click, (x, y))).max() <= 1
        k, image = shown[visitor]
        frames = tracker.frames[:k + 1]
        assert not np.array_equal(frames[0], frames[k])            # the camera moved on
        want = reference_masks(predictor, frames, click)[k]
        on_page = (image != frames[k]).any(-1)                      # the tinted pixels
        assert want.any() and not want.all()
        np.testing.assert_allclose(centroid(on_page), centroid(want), atol=1.0)
        assert (on_page != want).mean() < 1e-3
