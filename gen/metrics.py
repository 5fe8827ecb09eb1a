"""Metrics: functions from samples or features to numbers.

Feature-based metrics (FID, KID, precision/recall, density/coverage) take features that the
caller extracted (e.g. Inception pool3 [N, 2048]); the Inception score takes class
probabilities [N, K]. Each follows the protocol of the reference implementation it cites.
"""
import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np

# Distances and kernels are float32 on the device; without HIGHEST, GPUs and TPUs may run
# float32 matmuls in TF32/bf16, which is too coarse for nearest-neighbour radii and MMD.
_HIGHEST = jax.lax.Precision.HIGHEST


def _nearest_high_quality(samples, means, std: float) -> tuple[np.ndarray, np.ndarray]:
  """Each sample's nearest mode [N] and whether it lies within 3 std of it [N]."""
  samples, means = np.asarray(samples, np.float64), np.asarray(means, np.float64)
  distances = np.linalg.norm(samples[:, None, :] - means[None, :, :], axis=-1)
  nearest = distances.argmin(axis=1)
  return nearest, distances[np.arange(len(samples)), nearest] <= 3 * std


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
  nearest, high_quality = _nearest_high_quality(samples, means, std)
  return {"modes": float(len(np.unique(nearest[high_quality]))),
          "high_quality": 100.0 * float(high_quality.mean())}


def mixture_mode_histogram_kl(samples, means, std: float) -> float:
  """KL(hist || uniform) in nats between the high-quality samples' modes and uniform.

  The mode-histogram KL of Srivastava et al. 2017 (VEEGAN, Table 2) and Lin et al. 2018
  (PacGAN, "reverse KL"): the nearest modes of the high-quality samples (as in
  `mixture_mode_coverage`), normalised to a histogram p over the K modes, against the
  uniform 1/K. Empty modes contribute 0 log 0 = 0, so a single captured mode gives log K.

  Args:
    samples: [N, 2] points.
    means: [K, 2] the mixture's means.
    std: the per-axis standard deviation of every component.

  Returns:
    Σ_k p_k log(K p_k), in [0, log K]; NaN when no sample is high quality.
  """
  nearest, high_quality = _nearest_high_quality(samples, means, std)
  num_modes = len(means)
  if not high_quality.any():
    return float("nan")
  p = np.bincount(nearest[high_quality], minlength=num_modes) / high_quality.sum()
  p = p[p > 0]
  return float(np.sum(p * np.log(num_modes * p)))


def gaussian_statistics(features) -> tuple[np.ndarray, np.ndarray]:
  """Mean [D] and covariance [D, D] (N - 1 normalised) of features [N, D], float64.

  As pytorch-fid's `calculate_activation_statistics` (np.cov(rowvar=False)).
  """
  features = np.asarray(features, np.float64)
  return features.mean(axis=0), np.cov(features, rowvar=False)


def _sqrtm(matrix: np.ndarray) -> np.ndarray:
  """scipy.linalg.sqrtm without the error estimate, whichever SciPy is installed."""
  import scipy.linalg  # Here, not above: SciPy's import is a fifth of every gen process's start.
  with warnings.catch_warnings():
    # pytorch-fid passes disp=False; SciPy 1.16-1.17 deprecate it, later releases drop it.
    warnings.simplefilter("ignore", DeprecationWarning)
    # Covariances of few samples or dead features are singular, and SciPy would warn on every
    # evaluation; frechet_distance handles that case as pytorch-fid does.
    warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
    try:
      return scipy.linalg.sqrtm(matrix, disp=False)[0]
    except TypeError:
      return scipy.linalg.sqrtm(matrix)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
  """The Fréchet distance between N(mu1 [D], sigma1 [D, D]) and N(mu2, sigma2), float64.

  ||mu1 - mu2||² + tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^½), computed exactly as
  pytorch-fid's `calculate_frechet_distance` (Heusel et al. 2017, FID), including the
  eps offset when the square root is not finite.

  Raises:
    ValueError: when the square root's diagonal has a non-negligible imaginary part.
  """
  mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
  sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
  sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
  if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
    raise ValueError(f"Mismatched statistics: {mu1.shape}, {mu2.shape}, {sigma1.shape}, "
                     f"{sigma2.shape}")
  diff = mu1 - mu2
  covmean = _sqrtm(sigma1.dot(sigma2))
  if not np.isfinite(covmean).all():
    # A singular product (e.g. fewer samples than dimensions) has no finite square root.
    offset = np.eye(sigma1.shape[0]) * eps
    covmean = _sqrtm((sigma1 + offset).dot(sigma2 + offset))
  if np.iscomplexobj(covmean):
    if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
      m = np.max(np.abs(covmean.imag))
      raise ValueError(f"Imaginary component {m}")
    covmean = covmean.real
  return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def inception_score(probabilities, splits: int = 10) -> tuple[float, float]:
  """Inception score of class probabilities [N, K]: mean and std over `splits`, float64.

  Salimans et al. 2016; as openai/improved-gan's `inception_score.py`: contiguous splits
  [i N / splits, (i + 1) N / splits), exp of the mean KL(p(y|x) || p(y)) in each, with
  p(y) the split's mean prediction; np.std (ddof 0) over splits.
  """
  p = np.asarray(probabilities, np.float64)
  n = len(p)
  if not 1 <= splits <= n:
    raise ValueError(f"splits must be in [1, {n}], got {splits}")
  scores = []
  for i in range(splits):
    part = p[i * n // splits:(i + 1) * n // splits]
    py = part.mean(axis=0, keepdims=True)
    # 0 log 0 = 0: zero probabilities (exact one-hot predictions) add nothing, not NaN. Where
    # p > 0, py > 0 too, so only p == 0 entries need the guard.
    positive = part > 0
    safe_part, safe_py = np.where(positive, part, 1.0), np.where(positive, py, 1.0)
    kl = np.where(positive, part * (np.log(safe_part) - np.log(safe_py)), 0.0)
    scores.append(np.exp(kl.sum(axis=1).mean()))
  return float(np.mean(scores)), float(np.std(scores))


@jax.jit
def _polynomial_mmd_sums(x_all, y_all, x_indices, y_indices):
  """Row sums [S, m] of K_XX without its diagonal, K_YY without its diagonal, and K_XY.

  For every subset s: X = x_all[x_indices[s]], Y = y_all[y_indices[s]], each [m, D], and
  k(a, b) = (a·b / D + 1)^3. One subset's kernels live at a time (lax.map).
  """
  dim = x_all.shape[1]

  def kernel(a, b):
    return (jnp.matmul(a, b.T, precision=_HIGHEST) / dim + 1.0) ** 3

  def subset(indices):
    x, y = x_all[indices[0]], y_all[indices[1]]
    k_xx, k_yy = kernel(x, x), kernel(y, y)
    return (k_xx.sum(1) - jnp.diagonal(k_xx), k_yy.sum(1) - jnp.diagonal(k_yy),
            kernel(x, y).sum(1))

  return jax.lax.map(subset, (x_indices, y_indices))


def kernel_inception_distance(features1, features2, num_subsets: int = 100,
                              subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
  """KID: mean and std (ddof 0) of the unbiased MMD² over random subsets.

  Bińkowski et al. 2018 (Demystifying MMD GANs), as their `polynomial_mmd_averages` and
  torch-fidelity's KID: the cubic kernel k(x, y) = (x·y / D + 1)^3; per subset, m rows
  drawn without replacement from each set (np.random.RandomState(seed), features1 then
  features2) and MMD² = Σ_{i≠j} [k(x_i, x_j) + k(y_i, y_j)] / (m (m - 1))
  - 2 Σ_{i,j} k(x_i, y_j) / m². Here m = min(subset_size, N1, N2) rather than an error.

  Args:
    features1: [N1, D] features.
    features2: [N2, D] features.
    num_subsets: how many subsets to average over.
    subset_size: rows per subset, before clipping to the smaller set.
    seed: the subset sampler's seed.

  Returns:
    (mean, std) of the per-subset MMD² estimates.
  """
  features1 = np.asarray(features1, np.float32)
  features2 = np.asarray(features2, np.float32)
  m = min(subset_size, len(features1), len(features2))
  if m < 2:
    raise ValueError("KID needs at least 2 rows in each set")
  rng = np.random.RandomState(seed)
  indices1, indices2 = [], []
  for _ in range(num_subsets):
    indices1.append(rng.choice(len(features1), m, replace=False))
    indices2.append(rng.choice(len(features2), m, replace=False))
  sums = _polynomial_mmd_sums(features1, features2, np.stack(indices1), np.stack(indices2))
  # Row sums are float32; the totals and the cancelling difference are float64.
  xx, yy, xy = (np.asarray(s, np.float64).sum(axis=1) for s in sums)
  mmd2 = (xx + yy) / (m * (m - 1)) - 2 * xy / m**2
  return float(mmd2.mean()), float(mmd2.std())


def _row_squared_distances(row, points, points_sq_norms):
  """||row - points_j||² [M] for row [D] and points [M, D], by the Gram expansion."""
  distances = (jnp.dot(row, row, precision=_HIGHEST)
               - 2 * jnp.dot(points, row, precision=_HIGHEST) + points_sq_norms)
  # The expansion can round slightly below zero for (near-)duplicate points.
  return jnp.maximum(distances, 0.0)


@functools.partial(jax.jit, static_argnames=("k", "batch_size"))
def _knn_squared_radii(points, k: int, batch_size: int):
  """Squared distance [N] from each of points [N, D] to its k-th nearest other point.

  Index k of the ascending distance row with the self-distance included (and forced to 0),
  i.e. prdc's `np.partition(d, k)[:, k]` and Kynkäänniemi et al.'s `distances[:, k]`.
  """
  sq_norms = jnp.sum(points * points, axis=-1)
  positions = jnp.arange(points.shape[0])

  def radius(args):
    row, i = args
    distances = jnp.where(positions == i, 0.0, _row_squared_distances(row, points, sq_norms))
    # k passes that each set aside one smallest entry (ties one at a time, as a sort would):
    # XLA's CPU top_k sorts every row, 6x slower for the 10,000 samples of an evaluation.
    for _ in range(k):
      distances = jnp.where(positions == jnp.argmin(distances), jnp.inf, distances)
    return jnp.min(distances)

  return jax.lax.map(radius, (points, jnp.arange(points.shape[0])), batch_size=batch_size)


@functools.partial(jax.jit, static_argnames=("batch_size",))
def _ball_statistics(queries, centres, squared_radii, batch_size: int):
  """For each of queries [Q, D], over the balls (centres [N, D], squared_radii [N]).

  Returns:
    How many balls hold it (distance <= radius) [Q], how many hold it strictly
    (distance < radius) [Q], and its squared distance to the nearest centre [Q].
  """
  sq_norms = jnp.sum(centres * centres, axis=-1)

  def statistics(row):
    distances = _row_squared_distances(row, centres, sq_norms)
    return (jnp.sum(distances <= squared_radii), jnp.sum(distances < squared_radii),
            jnp.min(distances))

  return jax.lax.map(statistics, queries, batch_size=batch_size)


def _point_sets(real, fake, k: int):
  real, fake = np.asarray(real, np.float32), np.asarray(fake, np.float32)
  if k >= min(len(real), len(fake)):
    raise ValueError(f"k = {k} needs more than k points in each set, got {len(real)} real "
                     f"and {len(fake)} fake")
  return real, fake


def precision_recall(real, fake, k: int = 3, batch_size: int = 1024) -> dict[str, float]:
  """Improved precision and recall (Kynkäänniemi et al. 2019).

  As the paper's reference code (kynkaanniemi/improved-precision-and-recall-metric): each
  real point's ball has radius its distance to its k-th nearest real neighbour (self
  excluded); precision is the fraction of fake points inside at least one real ball
  (distance <= radius); recall swaps the roles. Distances are float32, as the reference's.

  Args:
    real: [N, D] features.
    fake: [M, D] features.
    k: the neighbourhood size (the paper uses 3).
    batch_size: rows of the distance matrix computed at once; bounds memory at
      batch_size x max(N, M) distances.

  Returns:
    {"precision": ..., "recall": ...}.
  """
  real, fake = _point_sets(real, fake, k)
  real_radii = _knn_squared_radii(real, k, min(batch_size, len(real)))
  fake_radii = _knn_squared_radii(fake, k, min(batch_size, len(fake)))
  inside_real, _, _ = _ball_statistics(fake, real, real_radii, min(batch_size, len(fake)))
  inside_fake, _, _ = _ball_statistics(real, fake, fake_radii, min(batch_size, len(real)))
  # Fractions on the host: a float32 mean would be off in the 8th digit.
  return {"precision": float(np.mean(np.asarray(inside_real) > 0)),
          "recall": float(np.mean(np.asarray(inside_fake) > 0))}


def density_coverage(real, fake, k: int = 5, batch_size: int = 1024) -> dict[str, float]:
  """Density and coverage (Naeem et al. 2020), as the `prdc` package's.

  Each real point's radius is index k of its ascending distance row to the real points,
  self (distance 0) included, as prdc's `np.partition(d, k)[:, k]`:
    density = Σ_j Σ_i 1[d(fake_j, real_i) < radius_i] / (k M),
    coverage = Σ_i 1[min_j d(real_i, fake_j) < radius_i] / N,
  with strict inequalities as prdc. Distances are float32 (prdc: the inputs' dtype).

  Args:
    real: [N, D] features.
    fake: [M, D] features.
    k: the neighbourhood size (the paper uses 5).
    batch_size: rows of the distance matrix computed at once.

  Returns:
    {"density": ..., "coverage": ...}; density may exceed 1.
  """
  real, fake = _point_sets(real, fake, k)
  real_radii = _knn_squared_radii(real, k, min(batch_size, len(real)))
  _, strictly_inside, _ = _ball_statistics(fake, real, real_radii, min(batch_size, len(fake)))
  _, _, nearest_fake = _ball_statistics(real, fake, jnp.zeros(len(fake)),
                                        min(batch_size, len(real)))
  density = int(np.asarray(strictly_inside).sum()) / (k * len(fake))
  return {"density": density, "coverage": float(np.mean(np.asarray(nearest_fake < real_radii)))}


def matched_accuracy(clusters, labels, num_clusters: int | None = None,
                     num_classes: int | None = None) -> float:
  """Accuracy of cluster assignments [N] as a classifier of `labels` [N] after the best
  one-to-one matching of clusters to classes (the Hungarian algorithm on their contingency
  table, scipy.optimize.linear_sum_assignment), as unsupervised clustering is scored. With
  more clusters than classes (or fewer), the unmatched ones count as wrong."""
  clusters, labels = np.asarray(clusters, np.int64), np.asarray(labels, np.int64)
  num_clusters = num_clusters or int(clusters.max()) + 1
  num_classes = num_classes or int(labels.max()) + 1
  counts = np.zeros((num_clusters, num_classes), np.int64)
  np.add.at(counts, (clusters, labels), 1)
  import scipy.optimize  # Here, as scipy.linalg in _sqrtm.
  rows, columns = scipy.optimize.linear_sum_assignment(counts, maximize=True)
  return float(counts[rows, columns].sum() / len(clusters))


def psnr(x, y, max_value: float = 1.0) -> jax.Array:
  """Peak signal-to-noise ratio [B] in dB of images x, y [B, H, W, C]; inf where x == y.

  10 log10(max_value² / MSE), the MSE over each image's pixels and channels.
  """
  x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
  mse = jnp.mean((x - y) ** 2, axis=tuple(range(1, x.ndim)))
  return 10.0 * jnp.log10(max_value**2 / mse)


def _gaussian_window(size: int, sigma: float) -> np.ndarray:
  """The normalised 1D Gaussian [size] centred on the middle tap (scipy.ndimage's)."""
  t = np.arange(size) - (size - 1) / 2
  window = np.exp(-0.5 * t**2 / sigma**2)
  return window / window.sum()


def _filter_valid(images, window: np.ndarray):
  """Separable 'valid' filtering of [B, H, W, C] by window ⊗ window: [B, H-s+1, W-s+1, C]."""
  size = len(window)
  height, width = images.shape[1:3]
  rows = sum(float(w) * images[:, t:t + height - size + 1] for t, w in enumerate(window))
  return sum(float(w) * rows[:, :, t:t + width - size + 1] for t, w in enumerate(window))


# Jitted: op by op, the 11x11 window's shifted sums are about a thousand small dispatches.
@functools.partial(jax.jit, static_argnames="max_value")
def ssim(x, y, max_value: float = 1.0) -> jax.Array:
  """Mean structural similarity [B] of images x, y [B, H, W, C], per channel then averaged.

  Wang et al. 2004, as skimage's `structural_similarity(gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=max_value)`: an 11x11 Gaussian window (sigma
  1.5), K1 = 0.01, K2 = 0.03, averaged over the positions where the window fits (skimage
  filters with reflection and then crops the border, which leaves exactly these).
  Images smaller than 11 pixels (e.g. 8x8 digits), which skimage rejects, use the largest
  odd window that fits, min(H, W) or one less, still with sigma 1.5.
  """
  x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
  size = min(11, *x.shape[1:3])
  size -= 1 - size % 2
  window = _gaussian_window(size, 1.5)
  c1, c2 = (0.01 * max_value) ** 2, (0.03 * max_value) ** 2
  mu_x, mu_y = _filter_valid(x, window), _filter_valid(y, window)
  var_x = _filter_valid(x * x, window) - mu_x**2
  var_y = _filter_valid(y * y, window) - mu_y**2
  cov_xy = _filter_valid(x * y, window) - mu_x * mu_y
  s = (((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2))
       / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)))
  # Every channel has the same number of positions, so this is the mean of channel means.
  return jnp.mean(s, axis=(1, 2, 3))
