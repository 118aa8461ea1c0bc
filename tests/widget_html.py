"""Test helper shared by the widget tests: what a widget tree gives the browser as HTML."""

from __future__ import annotations


def html_texts(widget) -> list[str]:
    """Every string ``widget`` and its descendants give the browser to render as HTML: the
    values of HTML widgets and descriptions that allow HTML."""
    import ipywidgets

    texts = []
    if isinstance(widget, (ipywidgets.HTML, ipywidgets.HTMLMath)):
        texts.append(widget.value)
    if getattr(widget, "description_allow_html", False):
        texts.append(widget.description)
    for child in getattr(widget, "children", ()):
        texts.extend(html_texts(child))
    return texts
