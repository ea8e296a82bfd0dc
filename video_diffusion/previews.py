"""
Previews during training: every ``--sample_interval`` steps (and at the end) the main rank
samples a fixed set of held-out videos with the EMA weights, so that a user watching a
run sees when its output stops being noise.

Each preview predicts every preview video from its first ``--sample_cond_frames`` frames
and generates one video unconditionally, with the default sampler (DPM-Solver++(2M)) and
``--sample_steps`` network evaluations. It writes
``<log_dir>/samples/step_<N>.png`` (ground truth above prediction for each video, given
frames outlined in red, the generated video last) and ``step_<N>.gif``, and returns the
prediction's PSNR and SSIM over the generated frames for progress.csv and TensorBoard.
"""

from pathlib import Path
from typing import Dict, List

import numpy as np
import torch

from .build import create_diffusion, create_model
from .config import Config
from .data import create_dataset, seed_of
from .evaluation.metrics import psnr, ssim
from .masking import prediction_mask
from .sampling import DEFAULT_SAMPLER, sample
from .visualize import auto_scale, grid, strip

# The held-out embedded videos: the same data seed offset as sampling and evaluation use.
HELD_OUT_OFFSET = 0x7E57


class Previews:
    """
    :param cfg: the run's configuration (``--sample_*`` fields).
    :param device: where the preview network runs.
    """

    def __init__(self, cfg: Config, device: torch.device):
        t = cfg.train
        self.cfg, self.device = cfg, device
        self.out_dir = Path(t.log_dir) / "samples"
        seq_len = cfg.model.seq_len
        if not 0 < t.sample_cond_frames < seq_len:
            raise ValueError(f"--sample_cond_frames must be in [1, --seq_len {seq_len}), got {t.sample_cond_frames}")
        # Held-out embedded videos; with --data_dir the first window of its first videos
        # (no held-out split is known during training; the log says so).
        data = create_dataset(cfg, windows="first", seed_offset=HELD_OUT_OFFSET)
        count = min(t.sample_videos, len(data))
        self.source = "held-out embedded videos" if not t.data_dir else f"the first videos of {t.data_dir}"
        self.videos = torch.stack([data[i]["video"] for i in range(count)]).to(device)
        self.labels = (torch.tensor([data[i]["y"] for i in range(count)], device=device)
                       if cfg.model.num_classes and count and "y" in data[0] else None)
        self.model = create_model(cfg).to(device).eval()
        self.diffusion = create_diffusion(cfg, str(t.sample_steps) if t.sample_steps < cfg.diffusion.diffusion_steps
                                          else "")
        self.conditioning = "replacement" if cfg.mask.uncondition_rate >= 1.0 else "mask"

    def _sample(self, x_known, obs_mask, seeds: List[int], labels):
        gens = [torch.Generator(device=self.device).manual_seed(s) for s in seeds]
        kwargs = {"y": labels} if labels is not None else {}
        return sample(self.diffusion, self.model, x_known.shape, gens, obs_mask=obs_mask, x_known=x_known,
                      sampler=DEFAULT_SAMPLER, conditioning=self.conditioning, model_kwargs=kwargs, device=self.device)

    @torch.no_grad()
    def __call__(self, weights: Dict[str, torch.Tensor], step: int) -> Dict:
        """
        Sample with ``weights`` (a state dict, e.g. the EMA weights) and write the pictures.

        :return: {"preview_psnr": ..., "preview_ssim": ..., "png": path, "gif": path, "image": uint8 HWC}.
        """
        from .sample_util import to_uint8

        self.model.load_state_dict(weights)
        t = self.cfg.train
        n, c = len(self.videos), t.sample_cond_frames
        mask = prediction_mask(n, self.cfg.model.seq_len, c).to(self.device)
        seed = self.cfg.train.seed
        pred = self._sample(self.videos, mask, [seed_of(seed, 0x9E7, i) for i in range(n)], self.labels)
        labels = self.labels[:1] if self.labels is not None else None
        gen = self._sample(torch.zeros_like(self.videos[:1]), torch.zeros_like(mask[:1]), [seed_of(seed, 0x6E4, 0)],
                           labels)
        gt_u8, pred_u8, gen_u8 = to_uint8(self.videos), to_uint8(pred), to_uint8(gen)
        p, g = torch.from_numpy(pred_u8[:, c:]), torch.from_numpy(gt_u8[:, c:])
        scores = {"preview_psnr": float(psnr(p, g).clamp(max=100).mean()), "preview_ssim": float(ssim(p, g).mean())}
        mask_np = mask.cpu().numpy()
        scale = auto_scale(self.cfg.model.image_size)
        picture = grid([[strip(gt_u8[i], mask_np[i], scale), strip(pred_u8[i], mask_np[i], scale)] for i in range(n)]
                       + [[strip(gen_u8[0], None, scale)]])
        self.out_dir.mkdir(parents=True, exist_ok=True)
        png = self.out_dir / f"step_{step:07d}.png"
        picture.save(png)
        gif = self.out_dir / f"step_{step:07d}.gif"
        self._save_gif(gif, gt_u8, pred_u8, gen_u8, scale)
        return {**scores, "png": png, "gif": gif, "image": np.asarray(picture)}

    @staticmethod
    def _save_gif(path, gt_u8, pred_u8, gen_u8, scale):
        """An animation: the ground truth in the top row, the predictions below, the generated video last."""
        def row(videos, f):
            return np.concatenate([v[f] for v in videos], axis=1)

        frames = []
        for f in range(gt_u8.shape[1]):
            top = row(gt_u8, f)
            bottom = np.concatenate([row(pred_u8, f), gen_u8[0, f]], axis=1)
            top = np.concatenate([top, np.zeros_like(gen_u8[0, f])], axis=1)
            frames.append(np.concatenate([top, bottom], axis=0))
        from .visualize import save_gif
        save_gif(path, np.stack(frames), scale=scale)
