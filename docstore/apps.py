from django.apps import AppConfig


class DocstoreConfig(AppConfig):
    name = "docstore"

    def ready(self):
        from . import checks  # noqa: F401 - registers the system checks
