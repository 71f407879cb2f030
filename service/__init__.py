"""The kap-forecast Flask service.

``create_app`` (:mod:`service.app`) builds the application, so both
``flask --app service run`` and ``gunicorn 'service:create_app()'`` find it.
"""

from service.app import create_app

__all__ = ["create_app"]
