"""Jupyter widgets: results browser, webcam classifier, image annotation."""
