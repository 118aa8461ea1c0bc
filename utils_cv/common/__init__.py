"""Helpers any vision task could use: data download, images, plots, device, Azure."""
