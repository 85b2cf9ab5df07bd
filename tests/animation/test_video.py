"""`pilot.animation.video`: GIF frame times that keep the asked frame rate."""

import numpy as np
import pytest
from PIL import Image

from pilot.animation.video import write_gif


@pytest.mark.parametrize(("fps", "n"), [(8, 16), (30, 30), (24, 48), (12, 12)])
def test_gif_plays_at_its_frame_rate(tmp_path, fps, n):
    """A GIF counts hundredths of a second: frame times alternate (30, 40, 30 ms at 30 fps) so
    the GIF lasts n / fps seconds, not n rounded times (120 ms at 8 fps: 8.3 fps)."""
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (4, 6, 3), dtype=np.uint8) for _ in range(n)]  # all distinct
    path = write_gif(iter(frames), tmp_path / "a.gif", fps=fps)
    durations = []
    with Image.open(path) as gif:
        for k in range(gif.n_frames):
            gif.seek(k)
            durations.append(gif.info["duration"])
    assert len(durations) == n and all(d % 10 == 0 for d in durations)
    assert sum(durations) == pytest.approx(1000 * n / fps, abs=5)
