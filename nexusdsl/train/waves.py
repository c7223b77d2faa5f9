"""Generated waveforms: the telephone keypad's DTMF tone of each digit, so that the digits set
has a third modality (audio) that says the same thing as its images and captions.

A DTMF digit is the sum of two sines, one from a low group (697, 770, 852, 941 Hz: the keypad
row) and one from a high group (1209, 1336, 1477 Hz: the column), ITU-T Q.23. Each example
gets its own random phases, a loudness between 0.6 and 1, and a little white noise, from a
fixed seed, so the set is the same on every machine and the tones are not all alike.
"""

from __future__ import annotations

import numpy as np

RATE = 8000  # samples per second, the telephone rate
SAMPLES = 512  # 64 ms per example
LOW = (697, 770, 852, 941)
HIGH = (1209, 1336, 1477)
# digit -> (row, column) on the keypad: 1 2 3 / 4 5 6 / 7 8 9 / * 0 #
KEYS = {0: (3, 1), **{d: ((d - 1) // 3, (d - 1) % 3) for d in range(1, 10)}}


def dtmf(labels: np.ndarray, samples: int = SAMPLES, seed: int = 0) -> np.ndarray:
    """(len(labels), samples) float32 waveforms in [-1, 1], one DTMF tone per label."""
    rng = np.random.default_rng(seed)
    t = np.arange(samples) / RATE
    waves = np.empty((len(labels), samples), dtype=np.float32)
    for i, label in enumerate(labels):
        row, col = KEYS[int(label)]
        phase = rng.uniform(0, 2 * np.pi, 2)
        loud = rng.uniform(0.6, 1.0)
        tone = np.sin(2 * np.pi * LOW[row] * t + phase[0]) + np.sin(2 * np.pi * HIGH[col] * t
                                                                     + phase[1])
        noisy = loud * 0.45 * tone + 0.05 * rng.standard_normal(samples)
        waves[i] = np.clip(noisy, -1.0, 1.0)
    return waves
