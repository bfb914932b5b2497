import django

from config.environment import choose_settings
from config.handlers import build_application

# .env first, then the settings it names; production (secrets required) when none is named.
choose_settings()
# What get_wsgi_application() does, with the handlers chosen by path (config/handlers.py).
django.setup(set_prefix=False)
application = build_application()
