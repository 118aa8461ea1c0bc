"""utils_cv: train, evaluate and deploy image classifiers."""

import warnings

__version__ = "0.1.0"

# fastai 2.8 calls torch.jit.script on a few activation functions when fastai.layers is
# imported, and torch >= 2.10 warns that torch.jit.script is deprecated: a red box in the first
# cell of every notebook that trains, and nothing a user can act on. Every module of ours that
# imports fastai is imported after this package, so this one narrow filter (that message, that
# category, raised in that torch module) silences exactly that warning; any other warning,
# from torch.jit or elsewhere, still shows. Remove it once fastai stops scripting at import.
warnings.filterwarnings(
    "ignore",
    message=r"`torch\.jit\.script` is deprecated",
    category=FutureWarning,
    module=r"torch\.jit\._script",
)
