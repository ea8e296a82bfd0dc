"""
Named configurations (presets): flat field -> value overrides of the defaults in
``config.py``; a flag given explicitly overrides its preset's value.
"""

from typing import Any, Dict

# The CPU presets share one recipe, chosen by measurement on 2 cores (docs/levers.md): x_0
# prediction on the cosine schedule (an epsilon model on the linear schedule still samples
# noise after this budget), 2x2 pixel patches folded into channels so the UNet runs at 16x16
# and 8x8 (about 3x the videos per second), full space-time attention at 8x8, the nearest
# given frame as input, lr 1e-3 with warm-up; normalisation across channels (GroupNorm over
# the video removes a digit's colour) and the warp head, which carries the given frames on
# (the lever that makes predictions keep their digits), here with the object tracker's
# prediction as the warp: each object of the given frames moved on at its velocity and
# reflected off the borders, so the network starts from moving, bouncing digits instead of
# having to discover motion, and learns to correct it.
_CPU_RECIPE = dict(image_size=32, seq_len=8, patch_size=2, num_res_blocks=1, channel_mult="1,2",
                   attention_resolutions="8", attention_type="full", num_heads=4, given_frame_input=True,
                   norm="channel", output_head="warp", warp_exact=True, warp_objects=True, predict_xstart=True,
                   noise_schedule="cosine",
                   max_num_mask_frames=3, uncondition_rate=0.25, lr=1e-3, lr_warmup_steps=100, batch_size=8,
                   sample_cond_frames=2)

PRESETS: Dict[str, Dict[str, Any]] = {
    # The first run: 250 steps. Its learning curve (docs/curves) falls from the first checkpoint
    # on: the warp head carries the digits from the start, and the network's corrections, learned
    # over random masks, wash them out as training goes on (2 -> 6: 22.8 dB at 50 steps on 16
    # videos, 21.3 at 250 and 18.4 at 1,000 on 32; with --warp_exact 24.3 at 100, 22.0 at 300 on
    # 16). 250 steps keep the digits; checkpoints every 50 steps, all kept (a learning curve),
    # previews every 125.
    "tiny": dict(_CPU_RECIPE, num_channels=32, ema_rate="0.99", max_steps=250, log_interval=25,
                 save_interval=50, sample_interval=125, keep_checkpoints=5),
    # The longer CPU run: under an hour on 2 cores, a wider network and a decaying lr.
    "small": dict(_CPU_RECIPE, num_channels=48, ema_rate="0.999", max_steps=5500, lr_anneal_steps=5500,
                  log_interval=100, save_interval=1000, sample_interval=1000),
    # The RaMViD BAIR setup: 64x64, 20 frames, K = 4, p = 0.25, lr 2e-5.
    "bair64": dict(image_size=64, seq_len=20, num_channels=128, num_res_blocks=2, channel_mult="1,2,3,4",
                   attention_resolutions="16,8", diffusion_steps=1000, noise_schedule="linear",
                   max_num_mask_frames=4, uncondition_rate=0.25, lr=2e-5, batch_size=8, ema_rate="0.9999",
                   max_steps=500_000, log_interval=100, save_interval=10_000, sample_cond_frames=1),
}
