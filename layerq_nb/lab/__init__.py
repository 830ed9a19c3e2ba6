"""The Jupyter side of layerq_nb as a JupyterLab extension.

- a server extension (this package; enabled by `etc/jupyter/jupyter_server_config.d/layerq_nb.json`,
  which `pip install` puts in place): REST handlers under `/layerq/` for what needs the file system
  (the tutorials, the learner's copies, the health check); see `handlers`;
- a prebuilt JupyterLab 4 extension, `layerq-nb` (source in the repository's `labextension/`, built
  assets in `layerq_nb/labextension/`, installed into `share/jupyter/labextensions/layerq-nb`): the
  "LayerQ tutorials" launcher section, the LayerQ menu, the palette commands and the health panel.
"""
from __future__ import annotations

LABEXTENSION = "layerq-nb"


def _jupyter_server_extension_points():
    return [{"module": "layerq_nb.lab"}]


def _load_jupyter_server_extension(serverapp):
    from .handlers import routes
    web_app = serverapp.web_app
    web_app.add_handlers(".*$", routes(web_app.settings["base_url"]))
    serverapp.log.info("layerq_nb: the LayerQ tutorials and health check are served under /layerq/")
