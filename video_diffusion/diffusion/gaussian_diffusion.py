"""
Gaussian diffusion over videos [N, C, T, H, W] with a per-video frame mask.

In the lineage of openai/improved-diffusion: the network is an argument of every call,
conditioning reaches it through ``model_kwargs``, and the process owns the noise, the
masking of the loss and the pasting of observed frames.

Observed frames (``obs_mask`` = 1) are never noised: x_t carries them clean, and every
loss term is averaged over the unobserved frames only, normalised by their number, so
a video with 1 kept frame and one with 4 weigh the same per generated pixel.
"""

import enum
import math
from typing import Dict, Optional

import numpy as np
import torch

from .likelihood import discretized_gaussian_log_likelihood, normal_kl


class ModelMeanType(enum.Enum):
    EPSILON = "epsilon"  # the network predicts the noise
    START_X = "x_start"  # the network predicts x_0
    V = "v"  # the network predicts v = sqrt(a) eps - sqrt(1 - a) x_0


class ModelVarType(enum.Enum):
    FIXED_SMALL = "fixed_small"  # the true posterior variance
    FIXED_LARGE = "fixed_large"  # beta_t
    LEARNED_RANGE = "learned_range"  # interpolation between the two, learned by the network


class LossType(enum.Enum):
    MSE = "mse"
    RESCALED_MSE = "rescaled_mse"  # MSE, plus the VB term rescaled to the MSE's magnitude


def get_named_beta_schedule(name: str, num_diffusion_timesteps: int, shift: float = 1.0) -> np.ndarray:
    """
    Betas of a named noise schedule.

    :param name: "linear" (DDPM's, scaled so that any step count spans the same range) or
        "cosine" (Nichol & Dhariwal 2021).
    :param num_diffusion_timesteps: the number of steps T.
    :param shift: s > 0 divides the signal-to-noise ratio of every step by s^2 (lowers its
        log-SNR by 2 log s), so s > 1 spends more of the steps, and of the training draws of t,
        at high noise, where a video's content is decided (Chen 2023; Hoogeboom et al. 2023,
        "simple diffusion", who shift by the ratio of resolutions). 1 leaves the schedule as is.
    :return: a float64 array of T betas.
    """
    if name == "linear":
        scale = 1000 / num_diffusion_timesteps
        betas = np.linspace(scale * 1e-4, scale * 0.02, num_diffusion_timesteps, dtype=np.float64)
    elif name == "cosine":
        def alpha_bar(s):
            return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2
        betas = np.array([min(1 - alpha_bar((i + 1) / num_diffusion_timesteps) / alpha_bar(i / num_diffusion_timesteps),
                              0.999) for i in range(num_diffusion_timesteps)], dtype=np.float64)
    else:
        raise ValueError(f"--noise_schedule must be 'linear' or 'cosine', got {name!r}")
    return betas if shift == 1.0 else shift_beta_schedule(betas, shift)


def shift_beta_schedule(betas: np.ndarray, shift: float) -> np.ndarray:
    """
    The schedule whose cumulative signal fraction abar' has SNR'(t) = SNR(t) / shift^2, where
    SNR = abar / (1 - abar), as betas.

    :param betas: a schedule's T betas.
    :param shift: s > 0.
    :return: T betas, each at most 0.999 (as the cosine schedule's).
    """
    if not shift > 0:
        raise ValueError(f"--schedule_shift must be > 0, got {shift}")
    abar = np.cumprod(1.0 - betas)
    snr = abar / (1.0 - abar) / shift ** 2
    shifted = snr / (1.0 + snr)
    return np.minimum(1.0 - shifted / np.concatenate([[1.0], shifted[:-1]]), 0.999)


def frames_to_elements(obs_mask: torch.Tensor) -> torch.Tensor:
    """[N, T] frame mask -> [N, 1, T, 1, 1], broadcastable over a video batch."""
    return obs_mask[:, None, :, None, None]


def masked_mean(x: torch.Tensor, gen_weight: torch.Tensor) -> torch.Tensor:
    """
    Mean of an elementwise term over the generated (unobserved) frames of each video.

    :param x: [N, C, T, H, W] elementwise values.
    :param gen_weight: [N, T], 1 on frames to generate, 0 on observed ones.
    :return: [N] means, each normalised by that video's number of generated elements.
    """
    n, c, t, h, w = x.shape
    per_frame = x.float().mean(dim=(1, 3, 4))  # [N, T]: mean over channels and pixels
    return (per_frame * gen_weight).sum(dim=1) / gen_weight.sum(dim=1)


class GaussianDiffusion:
    """
    :param betas: float64 array of betas per timestep.
    :param model_mean_type: what the network predicts.
    :param model_var_type: how the reverse variance is chosen.
    :param loss_type: MSE or rescaled MSE (the VB term is added when the variance is learned).
    :param min_snr_gamma: if > 0, weight each video's MSE by min(SNR_t, gamma) relative to
        the epsilon loss (Hang et al. 2023, "Min-SNR weighting"); 0 = unweighted MSE of the
        network's own target.
    :param sigma_data: with x_0 prediction, if > 0 the network's output F is turned into
        x_0 = c_skip x + c_out F with x = x_t / sqrt(abar), c_skip = sd^2 / (sigma^2 + sd^2),
        c_out = sigma sd / sqrt(sigma^2 + sd^2), sigma^2 = (1 - abar) / abar, sd = sigma_data:
        EDM's preconditioning (Karras et al. 2022). Near-clean inputs pass through without the
        network having to learn the identity, and F's target has unit variance at every noise
        level (it moves from -noise at low noise to x_0 / sd at high noise); the loss is then
        EDM's, the x_0 MSE weighted by 1 / c_out^2 (the "mse" term stays the x_0 MSE).
    """

    def __init__(self, *, betas, model_mean_type: ModelMeanType, model_var_type: ModelVarType,
                 loss_type: LossType, min_snr_gamma: float = 0.0, sigma_data: float = 0.0):
        if min_snr_gamma < 0:
            raise ValueError(f"--min_snr_gamma must be >= 0, got {min_snr_gamma}")
        if sigma_data < 0:
            raise ValueError(f"--sigma_data must be >= 0, got {sigma_data}")
        if sigma_data > 0 and model_mean_type != ModelMeanType.START_X:
            raise ValueError("--sigma_data needs --predict_xstart (the skip is written on x_0)")
        self.sigma_data = sigma_data
        self.min_snr_gamma = min_snr_gamma
        self.model_mean_type = model_mean_type
        self.model_var_type = model_var_type
        self.loss_type = loss_type
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or not ((betas > 0).all() and (betas < 1).all()):
            raise ValueError(f"betas must lie in (0, 1), got range [{betas.min():.3g}, {betas.max():.3g}]; "
                             "with the linear schedule use --diffusion_steps > 20 (or the cosine schedule)")
        self.betas = betas
        self.num_timesteps = len(betas)

        alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(alphas)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1)
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        # The posterior variance is 0 at t = 0; its log is clipped to the value at t = 1. A one-step
        # process (a sampler asked for one network evaluation) has no t = 1, and its t = 0 step adds no
        # noise: its beta stands in, only so that the log is finite.
        self._first_variance = self.posterior_variance[1] if len(betas) > 1 else betas[0]
        self.posterior_log_variance_clipped = np.log(np.append(self._first_variance, self.posterior_variance[1:]))
        self.posterior_mean_coef1 = betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - self.alphas_cumprod)
        sigma2 = (1.0 - self.alphas_cumprod) / self.alphas_cumprod  # EDM's sigma^2 of each step
        sd2 = sigma_data ** 2
        self.edm_c_skip = sd2 / (sigma2 + sd2) if sigma_data else np.zeros_like(sigma2)
        self.edm_c_out = np.sqrt(sigma2 * sd2 / (sigma2 + sd2)) if sigma_data else np.ones_like(sigma2)
        self._device_cache: Dict = {}

    # ------------------------------------------------------------------ helpers
    def extract(self, name: str, t: torch.Tensor, ndim: int) -> torch.Tensor:
        """
        Gather a per-timestep coefficient, shaped to broadcast over an ndim-dimensional batch: for
        t [N] one per batch element; for t [N, T] (one level per frame) one per frame of
        [N, C, T, ...] videos.
        """
        key = (name, t.device)
        if key not in self._device_cache:
            self._device_cache[key] = torch.as_tensor(getattr(self, name), dtype=torch.float32, device=t.device)
        out = self._device_cache[key][t]
        if t.ndim == 2:
            return out.reshape(t.shape[0], 1, t.shape[1], *([1] * (ndim - 3)))
        return out.reshape(-1, *([1] * (ndim - 1)))

    def _check_mask(self, x: torch.Tensor, obs_mask: Optional[torch.Tensor]) -> torch.Tensor:
        n, _, t = x.shape[:3]
        if obs_mask is None:
            return torch.zeros(n, t, device=x.device)
        if obs_mask.shape != (n, t):
            raise ValueError(f"obs_mask must have shape [N, T] = {(n, t)}, got {tuple(obs_mask.shape)}")
        return obs_mask.to(device=x.device, dtype=torch.float32)

    # ------------------------------------------------------------------ forward process
    def q_mean_variance(self, x_start, t):
        """
        Mean and variance of q(x_t | x_0).

        :param x_start: [N, ...] clean data.
        :param t: [N] timesteps.
        :return: (mean, variance, log_variance).
        """
        mean = self.extract("sqrt_alphas_cumprod", t, x_start.ndim) * x_start
        variance = self.extract("alphas_cumprod", t, x_start.ndim)
        variance = (1.0 - variance).expand_as(x_start)
        return mean, variance, torch.log(variance)

    def q_sample(self, x_start, t, noise=None):
        """
        Sample q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I).

        :param x_start: [N, ...] clean data.
        :param t: [N] timesteps.
        :param noise: optional standard normal noise of x_start's shape.
        :return: the noised x_t.
        """
        if noise is None:
            noise = torch.randn_like(x_start)
        return (self.extract("sqrt_alphas_cumprod", t, x_start.ndim) * x_start
                + self.extract("sqrt_one_minus_alphas_cumprod", t, x_start.ndim) * noise)

    def q_posterior_mean_variance(self, x_start, x_t, t):
        """
        Mean and variance of the forward posterior q(x_{t-1} | x_t, x_0).

        :return: (mean, variance, clipped log-variance).
        """
        nd = x_t.ndim
        mean = self.extract("posterior_mean_coef1", t, nd) * x_start + self.extract("posterior_mean_coef2", t, nd) * x_t
        return (mean, self.extract("posterior_variance", t, nd).expand_as(x_t),
                self.extract("posterior_log_variance_clipped", t, nd).expand_as(x_t))

    # ------------------------------------------------------------------ parameterisations
    def predict_xstart_from_eps(self, x_t, t, eps):
        """x_0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar)."""
        nd = x_t.ndim
        return self.extract("sqrt_recip_alphas_cumprod", t, nd) * x_t - self.extract("sqrt_recipm1_alphas_cumprod", t, nd) * eps

    def predict_eps_from_xstart(self, x_t, t, pred_xstart):
        """eps = (x_t - sqrt(abar) x_0) / sqrt(1 - abar)."""
        nd = x_t.ndim
        return ((self.extract("sqrt_recip_alphas_cumprod", t, nd) * x_t - pred_xstart)
                / self.extract("sqrt_recipm1_alphas_cumprod", t, nd))

    def predict_xstart_from_v(self, x_t, t, v):
        """x_0 = sqrt(abar) x_t - sqrt(1 - abar) v."""
        nd = x_t.ndim
        return self.extract("sqrt_alphas_cumprod", t, nd) * x_t - self.extract("sqrt_one_minus_alphas_cumprod", t, nd) * v

    def xstart_from_output(self, out, x_t, t):
        """
        The x_0 an x_0-predicting network's output stands for: the output itself, or with
        ``sigma_data`` the preconditioned c_skip x + c_out F.

        :param out: [N, C, ...] the network's output F.
        :param x_t: [N, C, ...] the network's input.
        :param t: [N] timesteps.
        """
        if self.sigma_data == 0:
            return out
        nd = x_t.ndim
        x = self.extract("sqrt_recip_alphas_cumprod", t, nd) * x_t
        return self.extract("edm_c_skip", t, nd) * x + self.extract("edm_c_out", t, nd) * out

    def get_v(self, x_start, noise, t):
        """v = sqrt(abar) eps - sqrt(1 - abar) x_0 (Salimans & Ho 2022)."""
        nd = x_start.ndim
        return self.extract("sqrt_alphas_cumprod", t, nd) * noise - self.extract("sqrt_one_minus_alphas_cumprod", t, nd) * x_start

    # ------------------------------------------------------------------ reverse process
    def split_model_output(self, model_output, channels: int):
        """Split a learned-sigma output into (mean part, variance part); variance part is None otherwise."""
        if self.model_var_type == ModelVarType.LEARNED_RANGE:
            if model_output.shape[1] != 2 * channels:
                raise ValueError(f"a learned-sigma model must output {2 * channels} channels, got {model_output.shape[1]}")
            return model_output[:, :channels], model_output[:, channels:]
        if model_output.shape[1] != channels:
            raise ValueError(f"the model must output {channels} channels, got {model_output.shape[1]}"
                             " (was it trained with learn_sigma?)")
        return model_output, None

    def output_to_mean_variance(self, model_output, x_t, t, clip_denoised: bool = True):
        """
        Turn a network output into the reverse-step Gaussian p(x_{t-1} | x_t).

        :param model_output: the raw network output for x_t.
        :param x_t: [N, C, T, H, W] current sample.
        :param t: [N] timesteps.
        :param clip_denoised: clip the predicted x_0 to [-1, 1].
        :return: dict with mean, variance, log_variance and pred_xstart.
        """
        nd = x_t.ndim
        out, var_values = self.split_model_output(model_output, x_t.shape[1])
        if self.model_var_type == ModelVarType.LEARNED_RANGE:
            min_log = self.extract("posterior_log_variance_clipped", t, nd)
            max_log = self.extract("log_betas", t, nd)
            frac = (var_values.float() + 1) / 2  # the network outputs [-1, 1]
            log_variance = frac * max_log + (1 - frac) * min_log
            variance = torch.exp(log_variance)
        else:
            name = "posterior_variance" if self.model_var_type == ModelVarType.FIXED_SMALL else "large_variance"
            log_name = "posterior_log_variance_clipped" if self.model_var_type == ModelVarType.FIXED_SMALL else "log_large_variance"
            variance = self.extract(name, t, nd).expand_as(x_t)
            log_variance = self.extract(log_name, t, nd).expand_as(x_t)
        pred_xstart = self.pred_xstart_of(out, x_t, t, clip_denoised)
        mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x_t, t)
        return {"mean": mean, "variance": variance, "log_variance": log_variance, "pred_xstart": pred_xstart}

    def pred_xstart_of(self, out, x_t, t, clip_denoised: bool = True):
        """
        The x_0 that the network's mean output (without a learned variance's channels) stands for,
        whatever it predicts (noise, v or x_0).

        :param out: [N, C, T, H, W] the output's mean part.
        :param t: [N] or [N, T] timesteps.
        :param clip_denoised: clip to [-1, 1].
        """
        out = out.float()
        if self.model_mean_type == ModelMeanType.EPSILON:
            pred_xstart = self.predict_xstart_from_eps(x_t, t, out)
        elif self.model_mean_type == ModelMeanType.V:
            pred_xstart = self.predict_xstart_from_v(x_t, t, out)
        else:
            pred_xstart = self.xstart_from_output(out, x_t, t)
        return pred_xstart.clamp(-1, 1) if clip_denoised else pred_xstart

    @property
    def log_betas(self):
        return np.log(self.betas)

    @property
    def large_variance(self):
        # beta_t, with the first entry replaced by the posterior variance so that the
        # decoder's log-likelihood at t = 0 stays finite (as improved-diffusion does).
        return np.append(self._first_variance, self.betas[1:])

    @property
    def log_large_variance(self):
        return np.log(self.large_variance)

    def p_mean_variance(self, model, x_t, t, obs_mask=None, clip_denoised=True, model_kwargs=None):
        """
        Apply the network and return the reverse-step Gaussian.

        :param model: callable (x, t, obs_mask=..., **model_kwargs) -> output.
        :param x_t: [N, C, T, H, W], observed frames holding their clean values.
        :param t: [N] timesteps.
        :param obs_mask: [N, T] frame mask, or None for unconditional.
        """
        obs = self._check_mask(x_t, obs_mask)
        model_output = model(x_t, self.model_timesteps(t), obs_mask=obs, **(model_kwargs or {}))
        return self.output_to_mean_variance(model_output, x_t, t, clip_denoised)

    def model_timesteps(self, t):
        """The timesteps the network sees; a respaced process maps them back to the base process."""
        return t

    # ------------------------------------------------------------------ training
    def _vb_terms_bpd(self, mean_var, x_start, x_t, t):
        """Elementwise variational-bound term, in bits per dimension: KL for t > 0, decoder NLL at t = 0."""
        true_mean, _, true_log_variance = self.q_posterior_mean_variance(x_start, x_t, t)
        kl = normal_kl(true_mean, true_log_variance, mean_var["mean"], mean_var["log_variance"]) / math.log(2.0)
        nll = -discretized_gaussian_log_likelihood(x_start, mean_var["mean"], 0.5 * mean_var["log_variance"]) / math.log(2.0)
        return torch.where((t == 0).reshape(-1, *([1] * (x_t.ndim - 1))), nll, kl)

    def training_losses(self, model, x_start, t, obs_mask=None, model_kwargs=None, noise=None, self_cond=None):
        """
        Per-video training losses; observed frames are kept clean and excluded from every term.

        :param model: callable (x, t, obs_mask=..., **model_kwargs) -> output.
        :param x_start: [N, C, T, H, W] clean videos in [-1, 1].
        :param t: [N] int64 timesteps, or [N, T] one per frame (Diffusion Forcing's per-frame noise
            levels; the network must embed them, e.g. a UNet3D with ``frame_levels``). Where every
            frame of a video has its video's level the losses equal those of t [N] bit for bit.
        :param obs_mask: [N, T], 1 = observed (left un-noised). None = unconditional.
        :param model_kwargs: extra keyword arguments for the network (e.g. class labels ``y``).
        :param noise: optional noise of x_start's shape (for reproducible per-sample noise).
        :param self_cond: [N] bool, for a self-conditioned network (which takes ``x_self_cond``);
            None for any other. The chosen videos get the network's own first estimate of x_0
            (made without gradients, with a zero ``x_self_cond``) as ``x_self_cond``, the others
            zeros, so the network learns both to estimate and to refine (Chen et al. 2022).
        :return: dict of [N] tensors: "loss", "mse" and, with a learned variance, "vb".
        """
        obs = self._check_mask(x_start, obs_mask)
        if t.shape not in ((x_start.shape[0],), tuple(obs.shape)):
            raise ValueError(f"t must have shape [N] or [N, T] = {tuple(obs.shape)}, got {tuple(t.shape)}")
        if t.ndim == 2 and (self.model_var_type == ModelVarType.LEARNED_RANGE
                            or self.min_snr_gamma > 0 or self.sigma_data > 0):
            raise ValueError("per-frame timesteps cannot be combined with a learned variance, Min-SNR "
                             "weighting or sigma_data: each weights a video's loss by its one timestep")
        gen_weight = 1.0 - obs
        if (gen_weight.sum(dim=1) == 0).any():
            bad = (gen_weight.sum(dim=1) == 0).nonzero().flatten().tolist()
            raise ValueError(f"obs_mask observes every frame of video(s) {bad}: there is nothing to generate "
                             "and the loss would be 0/0")
        if noise is None:
            noise = torch.randn_like(x_start)
        observed = frames_to_elements(obs).bool()
        x_t = torch.where(observed, x_start, self.q_sample(x_start, t, noise))
        kwargs = dict(model_kwargs or {})
        if self_cond is not None:
            kwargs["x_self_cond"] = self.first_estimate(model, x_t, t, obs, self_cond, kwargs)
        model_output = model(x_t, self.model_timesteps(t), obs_mask=obs, **kwargs)
        out, var_values = self.split_model_output(model_output, x_start.shape[1])

        terms = {}
        if var_values is not None:
            # The VB term trains only the variance: the mean is frozen, so the MSE alone
            # drives the mean (improved-diffusion's hybrid objective).
            frozen = torch.cat([out.detach(), var_values], dim=1)
            mean_var = self.output_to_mean_variance(frozen, x_t, t, clip_denoised=False)
            vb = masked_mean(self._vb_terms_bpd(mean_var, x_start, x_t, t), gen_weight)
            if self.loss_type == LossType.RESCALED_MSE:
                # The VB term is summed over T steps in the true bound; dividing by 1000
                # instead of T keeps its scale independent of the step count.
                vb = vb * self.num_timesteps / 1000.0
            terms["vb"] = vb
        if self.model_mean_type == ModelMeanType.EPSILON:
            target = noise
        elif self.model_mean_type == ModelMeanType.V:
            target = self.get_v(x_start, noise, t)
        else:
            target = x_start
            out = self.xstart_from_output(out.float(), x_t, t)
        terms["mse"] = masked_mean((target - out.float()) ** 2, gen_weight)
        mse = terms["mse"] * self.snr_loss_weight(t) if self.min_snr_gamma > 0 else terms["mse"]
        if self.sigma_data > 0:
            # EDM's weight 1 / c_out^2: the loss of F itself, whose target has unit scale at every
            # level. Unweighted, low noise would count ~sigma^2 and F would never learn to take
            # the noise out of the input that the skip passes through.
            mse = mse / self.extract("edm_c_out", t, 1) ** 2
        terms["loss"] = mse + terms.get("vb", 0.0)
        return terms

    def first_estimate(self, model, x_t, t, obs, chosen, model_kwargs):
        """
        Self-conditioning's input in training: for the ``chosen`` videos ([N] bool) the network's
        x_0 from x_t with a zero ``x_self_cond``, without gradients, their given frames replaced by
        the given values (as the sampler does); zeros for the others. Only the chosen videos
        pay for the extra pass.
        """
        estimate = torch.zeros(x_t.shape, dtype=torch.float32, device=x_t.device)
        if chosen.shape != (x_t.shape[0],):
            raise ValueError(f"self_cond must have shape [N] = {(x_t.shape[0],)}, got {tuple(chosen.shape)}")
        idx = chosen.nonzero().flatten()
        if idx.numel() == 0:
            return estimate
        n = x_t.shape[0]
        sub = {k: v[idx] if torch.is_tensor(v) and v.shape[:1] == (n,) else v for k, v in model_kwargs.items()}
        x_sub, t_sub = x_t[idx], t[idx]
        with torch.no_grad():
            output = model(x_sub, self.model_timesteps(t_sub), obs_mask=obs[idx],
                           x_self_cond=torch.zeros_like(x_sub), **sub)
            x0 = self.pred_xstart_of(self.split_model_output(output, x_t.shape[1])[0], x_sub, t_sub)
        estimate[idx] = torch.where(frames_to_elements(obs[idx]).bool(), x_sub.float(), x0)
        return estimate

    def snr_loss_weight(self, t: torch.Tensor) -> torch.Tensor:
        """
        Min-SNR-gamma weight of each video's MSE, for the network's parameterisation.

        Written as a weight on the epsilon loss, min-SNR is min(SNR, gamma) / SNR; the
        x_0 loss is SNR times the epsilon loss and the v loss (SNR + 1) times it, so the
        same weighting is min(SNR, gamma) for x_0 and min(SNR, gamma) / (SNR + 1) for v.

        :param t: [N] timesteps.
        :return: [N] float weights.
        """
        abar = self.extract("alphas_cumprod", t, 1)
        snr = abar / (1 - abar)
        clipped = snr.clamp(max=self.min_snr_gamma)
        if self.model_mean_type == ModelMeanType.EPSILON:
            return clipped / snr
        if self.model_mean_type == ModelMeanType.V:
            return clipped / (snr + 1)
        return clipped
