from django.core.wsgi import get_wsgi_application

from config.environment import choose_settings

# .env first, then the settings it names; production (secrets required) when none is named.
choose_settings()
application = get_wsgi_application()
