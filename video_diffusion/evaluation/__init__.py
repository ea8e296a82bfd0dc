"""Evaluation: I3D features, Fréchet video distance, PSNR and SSIM."""
