"""Image classification: data, backbones, training, export, plots, widgets."""
