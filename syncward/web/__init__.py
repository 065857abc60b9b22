"""The operations surface: health, Prometheus metrics, a JSON API and a live dashboard.

`create_app` makes the ASGI application (Starlette) over a running `Runtime`, or over a
store URL alone (a read-only watcher); mount it in your own app, or serve it with
``syncward run --http`` / ``syncward serve``. It needs the ``web`` extra
(``pip install "syncward[web]"``: starlette, uvicorn, prometheus-client); importing this
package without it raises `MissingDependency`.
"""

from __future__ import annotations

import importlib.util

from syncward.errors import MissingDependency

if any(importlib.util.find_spec(m) is None for m in ("starlette", "prometheus_client")):
    raise MissingDependency("web")

from syncward.web.app import OpsApp as OpsApp
from syncward.web.app import create_app as create_app
from syncward.web.config import ADMIN_TOKEN_ENV as ADMIN_TOKEN_ENV
from syncward.web.config import WebConfig as WebConfig
from syncward.web.config import load_admin_token as load_admin_token

__all__ = ["ADMIN_TOKEN_ENV", "OpsApp", "WebConfig", "create_app", "load_admin_token"]
