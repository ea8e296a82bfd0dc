"""Gaussian KL divergence and the discretized decoder likelihood used by the variational bound."""

import math

import torch


def normal_kl(mean1, logvar1, mean2, logvar2):
    """
    KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))), elementwise, in nats.

    :param mean1: mean of the first Gaussian.
    :param logvar1: log-variance of the first Gaussian.
    :param mean2: mean of the second Gaussian.
    :param logvar2: log-variance of the second Gaussian.
    :return: a tensor broadcast from the inputs.
    """
    logvar1, logvar2 = (torch.as_tensor(v, dtype=torch.float32, device=mean1.device)
                        if not torch.is_tensor(v) else v for v in (logvar1, logvar2))
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def approx_standard_normal_cdf(x):
    """A fast tanh approximation of the standard normal CDF (accurate to ~1e-3)."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def discretized_gaussian_log_likelihood(x, means, log_scales):
    """
    Log-likelihood of data in [-1, 1] quantised to 256 bins under a Gaussian, in nats.

    :param x: targets, uint8 values rescaled to [-1, 1].
    :param means: Gaussian means, same shape as x.
    :param log_scales: Gaussian log standard deviations, same shape as x.
    :return: elementwise log-probabilities.
    """
    centered = x - means
    inv_stdv = torch.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_cdf_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    # The outermost bins extend to -inf and +inf.
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta))
