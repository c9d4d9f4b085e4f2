"""The notebook as one HTML page that reads offline.

`jupyter nbconvert --to html` writes a page that needs the network: formulas
stay TeX until MathJax arrives from a CDN, widgets (the latent explorer, tqdm
progress bars) wait for a widget renderer from another CDN, and progress bars
hidden in Jupyter (leave=False) leave gaps. export_html uses the same
exporter (nbconvert's HTMLExporter, lab template, Python highlighted as
usual) with three small changes, each hand-written because nbconvert has no
switch for it:

* formulas become MathML, which browsers draw natively, at export time
  (_MathMLRenderer, with the latex2mathml package);
* widget views are replaced before rendering (_WidgetsAsPictures): the
  explorer by the PNG of its view that its output carries (or, in a notebook
  saved before it did, by the pictures in the saved widget state, or else a
  note), at the picture's own size; tqdm progress bars are dropped;
* the template leaves out the script tags that load require.js, MathJax,
  mermaid and the widget renderer from CDNs (_TEMPLATE).

    python -m facegen.html dlnd_face_generation.ipynb dlnd_face_generation.html
"""

import html
import re
import sys
from pathlib import Path

from jinja2 import DictLoader, pass_context
from latex2mathml.converter import convert as latex_to_mathml
from nbconvert import HTMLExporter
from nbconvert.filters.markdown_mistune import (
    IPythonRenderer,
    MarkdownWithMath,
)
from nbconvert.preprocessors import Preprocessor

WIDGET_VIEW = 'application/vnd.jupyter.widget-view+json'
WIDGET_STATE = 'application/vnd.jupyter.widget-state+json'

# tqdm's meter: "[elapsed<remaining, rate]" or, without a total,
# "[elapsed, rate]"; elapsed is MM:SS or H:MM:SS.
_TQDM_METER = re.compile(r'\[(\d+:)?\d\d:\d\d[<,]')

STILL_NOTE = (
    'A still of the interactive explorer: in Jupyter its seeds, slider and '
    'checkbox change the faces.'
)
STILL_ALT = (
    'The latent explorer as saved: the face at the slider above the strip '
    'of faces along the path'
)
NO_PICTURE_NOTE = (
    'The latent explorer is interactive: run the notebook in Jupyter (with '
    'ipywidgets) to use it. This saved run kept no picture of it.'
)

# The lab template, less the blocks that load scripts from CDNs (the widget
# state script goes too: _WidgetsAsPictures removes the notebook's widget
# metadata). Mermaid diagrams, which this notebook has none of, would stay
# as their source text.
_TEMPLATE_NAME = 'facegen_offline.html.j2'
_TEMPLATE = """{%- extends 'index.html.j2' -%}
{%- block html_head_js -%}{%- endblock html_head_js -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
"""


def tex_to_mathml(tex, display='inline'):
    """MathML for a TeX formula (display 'inline' or 'block'); TeX that
    latex2mathml cannot read is kept as code, readable without MathJax."""
    try:
        return latex_to_mathml(tex.strip(), display=display)
    except Exception:  # latex2mathml raises many types on unknown TeX
        return f'<code class="tex">{html.escape(tex.strip())}</code>'


class _MathMLRenderer(IPythonRenderer):
    """nbconvert's markdown renderer, writing formulas as MathML instead of
    leaving their TeX for MathJax."""

    def inline_math(self, body):
        return tex_to_mathml(body)

    def block_math(self, body):
        return tex_to_mathml(body, 'block')

    def latex_environment(self, name, body):
        return tex_to_mathml(rf'\begin{{{name}}}{body}\end{{{name}}}', 'block')


class _OfflineHTMLExporter(HTMLExporter):
    """HTMLExporter (lab template) without CDN scripts, formulas as
    MathML."""

    @pass_context
    def markdown2html(self, context, source):
        """HTMLExporter.markdown2html (nbconvert 7) with _MathMLRenderer in
        place of IPythonRenderer."""
        cell = context.get('cell', {})
        renderer = _MathMLRenderer(
            escape=False,
            attachments=cell.get('attachments', {}),
            embed_images=self.embed_images,
            path=context.get('resources', {})
            .get('metadata', {})
            .get('path', ''),
            anchor_link_text=self.anchor_link_text,
            exclude_anchor_links=self.exclude_anchor_links,
            **self.lexer_options,
        )
        return MarkdownWithMath(renderer=renderer).render(source)


def _model(state, reference):
    """The saved widget model that 'IPY_MODEL_<id>' (or a bare id) names,
    or {}."""
    return state.get(str(reference).removeprefix('IPY_MODEL_'), {})


def saved_pngs(state, model_id):
    """The base64 PNGs of the visible Image widgets in the saved widget state
    under model model_id, in display order."""
    model = _model(state, model_id)
    fields = model.get('state', {})
    layout = _model(state, fields.get('layout')).get('state', {})
    if layout.get('display') == 'none':
        return []
    if model.get('model_name') == 'ImageModel':
        return [
            buffer['data']
            for buffer in model.get('buffers', [])
            if buffer['path'] == ['value'] and buffer['encoding'] == 'base64'
            and fields.get('format') == 'png'
        ]
    return [
        png
        for child in fields.get('children', [])
        for png in saved_pngs(state, child)
    ]


def still_html(pngs, note):
    """HTML of base64 PNGs one above the other, each at its own size (the
    page's CSS only shrinks pictures wider than the page), then note in
    italics."""
    alt = html.escape(STILL_ALT)
    pictures = ''.join(
        f'<div><img alt="{alt}" src="data:image/png;base64,{png}"></div>'
        for png in (''.join(png.split()) for png in pngs)  # no line breaks
    )
    return (
        f'<div class="widget-still">{pictures}<p class="widget-note">'
        f'<em>{html.escape(note)}</em></p></div>'
    )


def offline_outputs(output, state):
    """What stands in for one output on the page: the output itself unless
    it shows a widget; a tqdm progress bar as nothing; a widget as the PNG
    its output carries (explore's) or else the pictures the saved widget
    state holds of it, with a note (see still_html); with no picture at all,
    the note alone. A widget keeps its output, and so its Out[n] prompt."""
    data = output.get('data', {})
    if WIDGET_VIEW not in data:
        return [output]
    if 'image/png' in data:
        pngs = [data['image/png']]
    elif _TQDM_METER.search(data.get('text/plain', '')):
        return []
    else:
        pngs = saved_pngs(state, data[WIDGET_VIEW].get('model_id'))
    note = STILL_NOTE if pngs else NO_PICTURE_NOTE
    output['data'] = {'text/html': still_html(pngs, note)}
    return [output]


class _WidgetsAsPictures(Preprocessor):
    """Replaces widget outputs as offline_outputs says and drops the saved
    widget state, which only a widget renderer could use."""

    def preprocess(self, nb, resources):
        widgets = nb.metadata.pop('widgets', {})
        state = widgets.get(WIDGET_STATE, {}).get('state', {})
        for cell in nb.cells:
            if cell.cell_type == 'code':
                cell.outputs = [
                    new
                    for output in cell.outputs
                    for new in offline_outputs(output, state)
                ]
        return nb, resources


def export_html(notebook_path, html_path):
    """Write the notebook at notebook_path as an HTML page that needs no
    network (see the module's docstring) to html_path."""
    exporter = _OfflineHTMLExporter(
        extra_loaders=[DictLoader({_TEMPLATE_NAME: _TEMPLATE})],
        template_file=_TEMPLATE_NAME,
        embed_images=True,  # pictures in markdown cells too
    )
    exporter.register_preprocessor(_WidgetsAsPictures(), enabled=True)
    body, _ = exporter.from_filename(str(notebook_path))
    Path(html_path).write_text(body, encoding='utf-8')


if __name__ == '__main__':
    if len(sys.argv) != 3:
        sys.exit('usage: python -m facegen.html NOTEBOOK.ipynb PAGE.html')
    export_html(*sys.argv[1:])
