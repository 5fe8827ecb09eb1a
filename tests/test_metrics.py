"""Sample-quality metrics against closed forms and independent NumPy/SciPy implementations."""
import numpy as np
import pytest
import scipy.linalg
import scipy.ndimage
import scipy.spatial.distance

from gen import metrics


def _features(seed, n, d, shift=0.0):
  rng = np.random.default_rng(seed)
  return rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) / np.sqrt(d) + shift


# --- Fréchet distance ---------------------------------------------------------------------


def test_gaussian_statistics_are_float64_mean_and_unbiased_covariance():
  x = _features(0, 50, 4).astype(np.float32)
  mu, sigma = metrics.gaussian_statistics(x)
  assert mu.dtype == sigma.dtype == np.float64 and sigma.shape == (4, 4)
  x64 = x.astype(np.float64)
  centred = x64 - x64.mean(0)
  np.testing.assert_allclose(mu, x64.mean(0), rtol=1e-12)
  np.testing.assert_allclose(sigma, centred.T @ centred / 49, rtol=1e-10)


def _frechet_by_eigendecomposition(mu1, sigma1, mu2, sigma2):
  # tr((Σ1 Σ2)^½) = tr((Σ1^½ Σ2 Σ1^½)^½): the symmetric form, by eigenvalues alone.
  w, v = scipy.linalg.eigh(sigma1)
  root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
  inner = scipy.linalg.eigvalsh(root1 @ sigma2 @ root1)
  trace_covmean = np.sqrt(np.clip(inner, 0, None)).sum()
  return np.sum((mu1 - mu2) ** 2) + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_covmean


def test_frechet_distance_matches_an_independent_scipy_implementation():
  mu1, sigma1 = metrics.gaussian_statistics(_features(1, 300, 16))
  mu2, sigma2 = metrics.gaussian_statistics(_features(2, 300, 16, shift=0.3))
  expected = _frechet_by_eigendecomposition(mu1, sigma1, mu2, sigma2)
  assert expected > 1.0
  np.testing.assert_allclose(metrics.frechet_distance(mu1, sigma1, mu2, sigma2), expected,
                             rtol=1e-6)


def test_frechet_distance_diagonal_closed_form():
  rng = np.random.default_rng(3)
  mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
  var1, var2 = rng.uniform(0.1, 3, size=8), rng.uniform(0.1, 3, size=8)
  expected = np.sum((mu1 - mu2) ** 2) + np.sum(var1 + var2 - 2 * np.sqrt(var1 * var2))
  np.testing.assert_allclose(
      metrics.frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2)), expected, rtol=1e-10)


def test_frechet_distance_is_zero_for_identical_statistics():
  mu, sigma = metrics.gaussian_statistics(_features(4, 200, 16))
  assert abs(metrics.frechet_distance(mu, sigma, mu, sigma)) < 1e-6


def test_frechet_distance_of_singular_covariances_is_quiet_and_matches(recwarn):
  # 10 samples of 16 features, some of them dead: rank-deficient, as a small evaluation gives.
  features1, features2 = _features(5, 10, 16), _features(6, 10, 16, shift=0.3)
  features1[:, :4] = features2[:, :4] = 0.0
  mu1, sigma1 = metrics.gaussian_statistics(features1)
  mu2, sigma2 = metrics.gaussian_statistics(features2)
  np.testing.assert_allclose(metrics.frechet_distance(mu1, sigma1, mu2, sigma2),
                             _frechet_by_eigendecomposition(mu1, sigma1, mu2, sigma2), rtol=1e-4)
  assert not [w for w in recwarn if issubclass(w.category, scipy.linalg.LinAlgWarning)]


def test_frechet_distance_raises_on_a_large_imaginary_component():
  # Not covariances, but sqrtm(I (-I)) = i I reliably: finite, complex, imaginary diagonal 1.
  eye = np.eye(3)
  with pytest.raises(ValueError, match="Imaginary component"):
    metrics.frechet_distance(np.zeros(3), eye, np.zeros(3), -eye)


# --- Inception score ----------------------------------------------------------------------


def test_inception_score_of_one_hot_predictions_spread_over_k_classes_is_k():
  k = 10
  probabilities = np.eye(k)[np.arange(200) % k]  # Every split holds every class equally.
  mean, std = metrics.inception_score(probabilities, splits=10)
  np.testing.assert_allclose(mean, k, rtol=1e-12)
  assert std < 1e-12


def test_inception_score_of_identical_predictions_is_one():
  probabilities = np.tile([0.7, 0.2, 0.1, 0.0], (50, 1))
  mean, std = metrics.inception_score(probabilities, splits=5)
  np.testing.assert_allclose(mean, 1.0, rtol=1e-12)
  assert std < 1e-12


def test_inception_score_matches_numpy():
  probabilities = np.random.default_rng(5).dirichlet(np.full(6, 0.3), size=103)
  scores = []
  # openai/improved-gan's boundaries: sizes 25, 26, 26, 26 (np.array_split would differ).
  for part in np.split(probabilities, [25, 51, 77]):
    kl = part * (np.log(part) - np.log(part.mean(0, keepdims=True)))
    scores.append(np.exp(kl.sum(1).mean()))
  mean, std = metrics.inception_score(probabilities, splits=4)
  np.testing.assert_allclose([mean, std], [np.mean(scores), np.std(scores)], rtol=1e-10)
  assert 1.5 < mean < 6


# --- KID ----------------------------------------------------------------------------------


def test_kid_of_identical_sets_is_near_zero_and_of_shifted_sets_positive():
  x = _features(6, 400, 16)
  same, _ = metrics.kernel_inception_distance(x, x, num_subsets=10, subset_size=200)
  shifted, _ = metrics.kernel_inception_distance(x, x + 0.5, num_subsets=10, subset_size=200)
  assert abs(same) < 0.05 * shifted
  assert shifted > 0.1


def test_kid_matches_a_direct_unbiased_mmd():
  x, y = _features(7, 60, 8), _features(8, 60, 8, shift=0.2)

  def kernel(a, b):
    return (a @ b.T / a.shape[1] + 1) ** 3

  m = len(x)
  k_xx, k_yy = kernel(x, x), kernel(y, y)
  expected = ((k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
              - 2 * kernel(x, y).mean())
  # One subset of all rows (subset_size clipped from 1000 to 60): a permutation, same MMD.
  mean, std = metrics.kernel_inception_distance(x, y, num_subsets=1)
  assert expected > 0.05
  np.testing.assert_allclose(mean, expected, rtol=1e-4)
  assert std == 0


# --- Precision/recall, density/coverage ---------------------------------------------------


def _knn_radii(points, k):
  distances = scipy.spatial.distance.cdist(points, points)
  return np.sort(distances, axis=1)[:, k]  # Column 0 is the point itself.


def _brute_force_prdc(real, fake):
  """Precision/recall with k = 3 and density/coverage with k = 5, from the full matrix."""
  real_fake = scipy.spatial.distance.cdist(real, fake)
  real_radii3, fake_radii3 = _knn_radii(real, 3), _knn_radii(fake, 3)
  real_radii5 = _knn_radii(real, 5)
  return {
      "precision": np.mean((real_fake <= real_radii3[:, None]).any(axis=0)),
      "recall": np.mean((real_fake <= fake_radii3[None, :]).any(axis=1)),
      "density": np.sum(real_fake < real_radii5[:, None]) / (5 * len(fake)),
      "coverage": np.mean(real_fake.min(axis=1) < real_radii5),
  }


def test_precision_recall_and_coverage_of_identical_sets_are_one():
  x = _features(9, 150, 5)
  assert metrics.precision_recall(x, x, k=3) == {"precision": 1.0, "recall": 1.0}
  assert metrics.density_coverage(x, x, k=5)["coverage"] == 1.0


def test_metrics_of_far_apart_sets_are_zero():
  real, fake = _features(10, 150, 5), _features(11, 120, 5, shift=100.0)
  assert metrics.precision_recall(real, fake, k=3) == {"precision": 0.0, "recall": 0.0}
  assert metrics.density_coverage(real, fake, k=5) == {"density": 0.0, "coverage": 0.0}


@pytest.mark.parametrize("batch_size", [1024, 32])
def test_precision_recall_density_coverage_match_brute_force(batch_size):
  real, fake = _features(12, 150, 5), 1.3 * _features(13, 120, 5, shift=0.4)
  result = {**metrics.precision_recall(real, fake, k=3, batch_size=batch_size),
            **metrics.density_coverage(real, fake, k=5, batch_size=batch_size)}
  for key, value in _brute_force_prdc(real, fake).items():
    assert 0.05 < value < 0.98, (key, value)  # Non-trivial, so a wrong radius shows.
    np.testing.assert_allclose(result[key], value, rtol=1e-12, err_msg=key)


def test_ball_membership_ties_on_an_integer_lattice():
  # Integer coordinates make float32 squared distances exact, so many fake points sit exactly
  # on a ball's boundary: inside for precision/recall (<=), outside for density/coverage (<).
  rng = np.random.default_rng(14)
  real, fake = rng.integers(0, 8, size=(60, 2)), rng.integers(0, 8, size=(50, 2))
  real, fake = np.unique(real, axis=0), np.unique(fake, axis=0)
  result = {**metrics.precision_recall(real, fake, k=3),
            **metrics.density_coverage(real, fake, k=5)}
  for key, value in _brute_force_prdc(real, fake).items():
    np.testing.assert_allclose(result[key], value, rtol=1e-12, err_msg=key)


def test_knn_radii_count_tied_and_duplicate_neighbours_one_at_a_time():
  # Repeated lattice points: many rows hold the same distance several times (0 among them),
  # and the k-th radius is index k of the sorted row, ties each counted, as np.sort's.
  points = np.random.default_rng(15).integers(0, 4, size=(200, 2)).astype(np.float32)
  for k in (3, 5):
    squared = scipy.spatial.distance.cdist(points, points, "sqeuclidean")
    np.testing.assert_array_equal(metrics._knn_squared_radii(points, k, 64),
                                  np.sort(squared, axis=1)[:, k])


# --- PSNR, SSIM ---------------------------------------------------------------------------


def _images(seed, shape=(2, 32, 32, 3)):
  return np.random.default_rng(seed).uniform(size=shape).astype(np.float32)


def test_psnr_is_ten_log10_of_one_over_mse():
  x = _images(14)
  y = np.clip(x + np.random.default_rng(15).normal(0, 0.1, x.shape), 0, 1).astype(np.float32)
  mse = ((x.astype(np.float64) - y) ** 2).mean(axis=(1, 2, 3))
  np.testing.assert_allclose(metrics.psnr(x, y), 10 * np.log10(1 / mse), rtol=1e-5)
  np.testing.assert_allclose(metrics.psnr(2 * x, 2 * y, max_value=2.0), 10 * np.log10(1 / mse),
                             rtol=1e-5)


def _ssim_reference(x, y, max_value, window_size):
  """skimage's recipe: Gaussian-filter every statistic (reflecting), crop the border, mean."""
  truncate = ((window_size - 1) // 2) / 1.5  # scipy's radius = int(truncate σ + 0.5).
  pad = (window_size - 1) // 2
  c1, c2 = (0.01 * max_value) ** 2, (0.03 * max_value) ** 2
  results = []
  for xi, yi in zip(x.astype(np.float64), y.astype(np.float64)):
    channel_means = []
    for c in range(xi.shape[-1]):
      a, b = xi[..., c], yi[..., c]

      def blur(image):
        return scipy.ndimage.gaussian_filter(image, 1.5, truncate=truncate, mode="reflect")

      ux, uy = blur(a), blur(b)
      vx, vy, vxy = blur(a * a) - ux**2, blur(b * b) - uy**2, blur(a * b) - ux * uy
      s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
      channel_means.append(s[pad:-pad, pad:-pad].mean())
    results.append(np.mean(channel_means))
  return np.array(results)


def test_ssim_of_an_image_with_itself_is_one():
  x = _images(16)
  np.testing.assert_allclose(metrics.ssim(x, x), 1.0, atol=1e-6)


def test_ssim_decreases_with_noise():
  x = _images(17, (1, 32, 32, 1))
  noise = np.random.default_rng(18).normal(size=x.shape).astype(np.float32)
  values = [float(metrics.ssim(x, x + s * noise)[0]) for s in (0.0, 0.05, 0.1, 0.2, 0.4)]
  assert all(a > b for a, b in zip(values, values[1:])), values


@pytest.mark.parametrize("shape,window_size", [((2, 32, 32, 3), 11), ((3, 8, 8, 1), 7)])
def test_ssim_matches_a_scipy_implementation(shape, window_size):
  x = _images(19, shape)
  y = np.clip(x + np.random.default_rng(20).normal(0, 0.2, shape), 0, 1).astype(np.float32)
  expected = _ssim_reference(2 * x, 2 * y, 2.0, window_size)
  assert np.all((expected > 0.1) & (expected < 0.9))
  np.testing.assert_allclose(metrics.ssim(2 * x, 2 * y, max_value=2.0), expected, atol=1e-4)


# --- Mixture-mode histogram KL ------------------------------------------------------------


def _ring(num_modes=8):
  angles = 2 * np.pi * np.arange(num_modes) / num_modes
  return 2 * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def test_mode_histogram_kl_of_uniform_samples_is_zero():
  means = _ring()
  samples = np.repeat(means, 30, axis=0) + np.random.default_rng(21).normal(0, 0.01, (240, 2))
  assert abs(metrics.mixture_mode_histogram_kl(samples, means, 0.02)) < 1e-12


def test_mode_histogram_kl_of_one_mode_is_log_k_and_ignores_low_quality_samples():
  means = _ring()
  # 20 samples on mode 2, plus low-quality ones (> 3 std from any mode) that must not count.
  samples = np.concatenate([np.repeat(means[2:3], 20, axis=0), np.zeros((5, 2)),
                            means[:5] + [0.1, 0.0]])
  np.testing.assert_allclose(metrics.mixture_mode_histogram_kl(samples, means, 0.02),
                             np.log(8), rtol=1e-12)
