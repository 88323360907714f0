"""JupyterLab for the browser test: loopback only, no token, a port of its own.

Used as ``jupyter lab --config tests/browser/jupyter_server_config.py``
with ``DELUGE_JUPYTER_PORT`` set, and the notebooks' folder in
``JUPYTERLAB_GALATA_ROOT_DIR``. Never use it for a real server: it turns
every protection off.
"""

import os

from jupyterlab.galata import configure_jupyter_server

c = get_config()  # noqa: F821 - provided by the config loader

configure_jupyter_server(c)
c.ServerApp.ip = "127.0.0.1"
c.ServerApp.port = int(os.environ["DELUGE_JUPYTER_PORT"])
c.ServerApp.open_browser = False
c.ServerApp.allow_root = True  # CI and these machines run as root
# No "would you like news?" prompt over the notebook.
c.LabApp.news_url = None
c.LabApp.check_for_updates_class = "jupyterlab.NeverCheckForUpdate"
