"""The one progress bar: drawn on a terminal, silent in logs and pipes and with --quiet."""
from __future__ import annotations

import io

from repvit.progress_bar import Progress


def test_bar_on_a_terminal_counts_to_the_total_with_its_postfix():
    out = io.StringIO()
    with Progress(desc="images", unit="img", stream=out, tty=True) as bar:
        bar.set_postfix("a.jpg: 3 prompts")
        for done in (1, 2, 5):
            bar.update_to(done, 5)
    drawn = out.getvalue()
    assert "images" in drawn and "5/5" in drawn and "a.jpg: 3 prompts" in drawn


def test_nothing_in_a_pipe_or_when_quiet():
    for bar in (Progress(10, stream=io.StringIO()), Progress(10, stream=io.StringIO(), tty=True, enabled=False)):
        bar.update(3)
        bar.update_to(7, 10)
        assert not bar.shown and bar.write("line") is False
        bar.close()
        assert bar.stream.getvalue() == ""


def test_lines_written_above_a_bar_reach_the_named_stream():
    bars, log = io.StringIO(), io.StringIO()
    bar = Progress(4, stream=bars, tty=True)
    bar.update(1)
    assert bar.write("epoch 1 done", log) and log.getvalue() == "epoch 1 done\n"
    bar.close()
    assert "epoch 1 done" not in bars.getvalue()
