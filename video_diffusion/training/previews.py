"""
Previews during training: every ``--sample_interval`` steps (and at the end) the main rank
samples a fixed set of held-out videos with the EMA weights, so that a user watching a
run sees when its output stops being noise.

A preview is what ``video_sample.py`` would produce: it goes through the same sampling plan
and generation (the default sampler and its grid, ``--sample_steps`` network evaluations,
the conditioning the training configuration implies, seeds from ``--seed``). It predicts
every preview video from its first ``--sample_cond_frames`` frames and generates one video
unconditionally, and writes ``<log_dir>/samples/step_<N>.png`` (ground truth above
prediction for each video, given frames outlined in red, the generated video last) and
``step_<N>.gif``, and returns the prediction's PSNR and SSIM over the generated frames for
progress.csv and TensorBoard (PSNR from the mean squared error over all predicted frames).
"""

from pathlib import Path
from typing import Dict

import numpy as np
import torch

from ..build import create_model
from ..config import Config
from ..distributed import DistContext
from ..evaluation.metrics import mse, psnr_of_mse, ssim
from ..sampling.generate import generate
from ..sampling.options import SampleOptions
from ..sampling.plan import resolve_plan, test_dataset
from ..visualize import auto_scale, grid, strip


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
        self.source = "held-out embedded videos" if not t.data_dir else f"the first videos of {t.data_dir}"
        # the previews read the training folder, so the training's --skip_bad_videos applies to them
        common = dict(steps=min(t.sample_steps, cfg.diffusion.diffusion_steps), seed=t.seed, data_dir=t.data_dir,
                      skip_bad_videos=t.skip_bad_videos)
        count = min(t.sample_videos, len(test_dataset(cfg, seq_len, t.data_dir, skip_bad=t.skip_bad_videos)))
        self.prediction = resolve_plan(cfg, SampleOptions(task="prediction", num_cond_frames=t.sample_cond_frames,
                                                          num_samples=count, batch_size=count, **common))
        self.generation = resolve_plan(cfg, SampleOptions(task="generation", num_samples=1, **common))
        self.model = create_model(cfg).to(device).eval()
        self.ctx = DistContext(0, 1, 0, 1, torch.device(device), "single")

    @torch.no_grad()
    def __call__(self, weights: Dict[str, torch.Tensor], step: int) -> Dict:
        """
        Sample with ``weights`` (a state dict, e.g. the EMA weights) and write the pictures.

        :return: {"preview_psnr": ..., "preview_ssim": ..., "png": path, "gif": path, "image": uint8 HWC,
            "num_videos": ..., "source": where the videos come from}.
        """
        self.model.load_state_dict(weights)
        c = self.cfg.train.sample_cond_frames
        pred = generate(self.model, self.prediction, self.ctx)
        gen = generate(self.model, self.generation, self.ctx)
        items = sorted(pred)
        gt_u8 = np.stack([pred[i][1] for i in items])
        pred_u8 = np.stack([pred[i][0] for i in items])
        gen_u8 = gen[0][0][None]
        mask = np.stack([pred[i][2] for i in items])
        n = len(items)
        p, g = torch.from_numpy(pred_u8[:, c:]), torch.from_numpy(gt_u8[:, c:])
        scores = {"preview_psnr": psnr_of_mse(mse(p, g).mean()), "preview_ssim": float(ssim(p, g).mean())}
        scale = auto_scale(self.cfg.model.image_size)
        picture = grid([[strip(gt_u8[i], mask[i], scale), strip(pred_u8[i], mask[i], scale)] for i in range(n)]
                       + [[strip(gen_u8[0], None, scale)]])
        self.out_dir.mkdir(parents=True, exist_ok=True)
        png = self.out_dir / f"step_{step:07d}.png"
        picture.save(png)
        gif = self.out_dir / f"step_{step:07d}.gif"
        self._save_gif(gif, gt_u8, pred_u8, gen_u8, scale)
        return {**scores, "png": png, "gif": gif, "image": np.asarray(picture), "num_videos": n, "source": self.source}

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
        from ..visualize import save_gif
        save_gif(path, np.stack(frames), scale=scale)
