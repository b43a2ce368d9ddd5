"""What a run shows on a terminal (console.py): the progress bar's layout, without TensorFlow."""

import io
import os
import re
import sys
import unittest
from unittest import mock

from charrnn.console import Console, format_speed


class Terminal(io.StringIO):
    """Standard error as a terminal: tqdm draws its bar here, frame after frame."""

    encoding = "utf-8"

    def isatty(self):
        return True

    def fileno(self):  # for os.get_terminal_size, mocked to say how wide the terminal is
        return 2

    def frames(self):
        """Each drawing of the bar, as the terminal last showed it."""
        return [f.strip("\n") for f in re.split(r"\r|\x1b\[A", self.getvalue()) if f.strip()]


class TestProgressBar(unittest.TestCase):
    def draw(self, total, columns, steps):
        terminal = Terminal()
        size = os.terminal_size((columns, 30))
        with mock.patch.object(sys, "stderr", terminal), mock.patch("os.get_terminal_size", return_value=size), \
                mock.patch("tqdm.std.tqdm.write"), Console(total, 0, 6000) as console:
            console.bar.mininterval = 0  # draw every step
            for step in range(1, steps + 1):
                console.advance(step)
                if step % 10 == 0:
                    console.log_window(4.0 - (step - 4.5) / total, 0.3, 10)  # the mean over the last 10 steps
                if step == 50:
                    console.validated(step, 2.5, 0.4, best=True)
        return terminal.frames()

    def test_the_bar_fits_80_columns_and_never_moves(self):
        for total, columns in ((300, 80), (9999, 80), (120, 100)):
            frames = self.draw(total, columns, min(total, 120))
            self.assertGreater(len(frames), 100)
            bars = {(frame.index("|"), frame.rindex("|")) for frame in frames}
            self.assertEqual(len(bars), 1, f"the bar moved: {bars}")
            (left, right), = bars
            self.assertGreaterEqual(right - left - 1, 14, frames[-1])  # cells of the bar itself
            for frame in frames:
                self.assertLess(len(frame), columns, frame)
            width = len(str(total))
            self.assertRegex(frames[0], rf"^ *0/{total}   0%\|")
            self.assertRegex(frames[0], r"\| 0:00:00<-:--:-- loss -\.--- val -\.---   -\.-k ch/s$")
            self.assertRegex(frames[-1], rf"^ *120/{total} +\d+%\|.*\| \d:\d\d:\d\d<\d:\d\d:\d\d "
                                         rf"loss \d\.\d{{3}} val 2\.500 +\d+\.\d[kM] ch/s$")
            self.assertEqual(frames[-1].index("/"), width)  # the step is padded to the total's width

    def test_speeds_are_six_characters_wide(self):
        for speed, shown in ((None, "  -.-k"), (950, "  0.9k"), (13_249, " 13.2k"), (999_949, "999.9k"),
                             (999_950, "  1.0M"), (12_345_678, " 12.3M")):
            self.assertEqual(format_speed(speed), shown)


if __name__ == "__main__":
    unittest.main()
