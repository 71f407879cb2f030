"""The kap-forecast Flask service (see ``service.app.create_app``)."""
