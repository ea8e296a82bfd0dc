"""Build the network and the diffusion process from a configuration."""

import numpy as np

from .config import Config, channel_mult_of
from .flags import parse_int_list
from .diffusion.gaussian_diffusion import GaussianDiffusion, LossType, ModelMeanType, ModelVarType, get_named_beta_schedule
from .diffusion.respace import SpacedDiffusion, space_timesteps
from .models.unet import UNet3D


def num_image_channels(cfg: Config) -> int:
    return 3 if cfg.model.rgb else 1


def _betas(d) -> np.ndarray:
    return get_named_beta_schedule(d.noise_schedule, d.diffusion_steps, d.schedule_shift)


def create_model(cfg: Config) -> UNet3D:
    m = cfg.model
    channels = num_image_channels(cfg)
    return UNet3D(
        image_size=m.image_size,
        in_channels=channels,
        model_channels=m.num_channels,
        out_channels=2 * channels if m.learn_sigma else channels,
        num_res_blocks=m.num_res_blocks,
        attention_resolutions=parse_int_list(m.attention_resolutions, "--attention_resolutions"),
        channel_mult=channel_mult_of(m),
        dropout=m.dropout,
        attention_type=m.attention_type,
        num_heads=m.num_heads,
        num_head_channels=m.num_head_channels,
        use_scale_shift_norm=m.use_scale_shift_norm,
        use_checkpoint=m.use_checkpoint,
        mask_input=m.mask_input,
        conv_type=m.conv_type,
        patch_size=m.patch_size,
        given_frame_input=m.given_frame_input,
        given_frames=m.given_frames,
        given_correlation=m.given_correlation,
        kernel_head=m.kernel_head,
        kernel_copy=m.kernel_copy,
        kernel_motion=m.kernel_motion,
        kernel_motion_far=m.kernel_motion_far,
        alphas_cumprod=np.cumprod(1.0 - _betas(cfg.diffusion)) if m.kernel_head else None,
        frame_levels=m.frame_levels,
        self_condition=m.self_condition,
        norm=m.norm,
        attention_position=m.attention_position,
        num_classes=m.num_classes or None,
    )


def create_diffusion(cfg: Config, timestep_respacing: str = None, timesteps=None) -> GaussianDiffusion:
    """
    :param timestep_respacing: overrides the configuration's (e.g. "ddim50").
    :param timesteps: the base timesteps to keep, explicitly (a sampling plan's grid); wins over both.
    """
    d = cfg.diffusion
    respacing = d.timestep_respacing if timestep_respacing is None else timestep_respacing
    if d.predict_xstart and d.predict_v:
        raise ValueError("--predict_xstart and --predict_v are exclusive")
    mean_type = (ModelMeanType.START_X if d.predict_xstart else ModelMeanType.V if d.predict_v
                 else ModelMeanType.EPSILON)
    if cfg.model.learn_sigma:
        var_type = ModelVarType.LEARNED_RANGE
    else:
        var_type = ModelVarType.FIXED_SMALL if d.sigma_small else ModelVarType.FIXED_LARGE
    kwargs = dict(betas=_betas(d),
                  model_mean_type=mean_type,
                  model_var_type=var_type,
                  loss_type=LossType.RESCALED_MSE if d.rescale_learned_sigmas else LossType.MSE,
                  min_snr_gamma=d.min_snr_gamma, sigma_data=d.sigma_data)
    if timesteps is not None:
        return SpacedDiffusion(timesteps, **kwargs)
    if not respacing:
        return GaussianDiffusion(**kwargs)
    abar = np.cumprod(1.0 - kwargs["betas"])
    return SpacedDiffusion(space_timesteps(d.diffusion_steps, respacing, abar), **kwargs)
