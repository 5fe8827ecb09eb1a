"""Metrics: functions from samples or features to numbers."""
import numpy as np


def mixture_mode_coverage(samples, means, std: float) -> dict[str, float]:
  """Mode coverage of samples from a 2D Gaussian mixture, as in VEEGAN and PacGAN.

  Srivastava et al. 2017 (VEEGAN, Sec. 5.1) and Lin et al. 2018 (PacGAN, Sec. 5.1): a
  sample is high quality when it lies within 3 standard deviations of its nearest mode;
  a mode is captured when it is the nearest mode of at least one high-quality sample.

  Args:
    samples: [N, 2] points (the papers use N = 2,500).
    means: [K, 2] the mixture's means.
    std: the per-axis standard deviation of every component.

  Returns:
    {"modes": captured modes, "high_quality": percent of high-quality samples}.
  """
  samples, means = np.asarray(samples, np.float64), np.asarray(means, np.float64)
  distances = np.linalg.norm(samples[:, None, :] - means[None, :, :], axis=-1)
  nearest = distances.argmin(axis=1)
  high_quality = distances[np.arange(len(samples)), nearest] <= 3 * std
  return {"modes": float(len(np.unique(nearest[high_quality]))),
          "high_quality": 100.0 * float(high_quality.mean())}
